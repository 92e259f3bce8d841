"""Keeps one FHIR ImagingStudy per indexed study, through the kernel's interactions.

The archive writes on its own behalf (a ``system/`` context), in one FHIR
transaction per call: it finds or creates the Patient by identifier
(PatientID), links the ServiceRequest whose identifier is the accession
number when one exists, and writes the ImagingStudy mapped by
``imaging_study.map_study`` from the index rows. Calls are per ingest batch,
so a study is rewritten once per batch, not once per instance.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import quote

from dicomweb.imaging_study import (
    StudyLinks,
    first,
    map_patient,
    map_study,
    patient_identifier,
)
from fhir_server.access.context import AuthContext
from fhir_server.access.scopes import ScopeSet
from fhir_server.interactions import crud
from fhir_server.interactions.conditional import find_conditional
from fhir_server.interactions.services import Services
from fhir_server.storage.base import Transaction
from fhir_server.storage.dicom_port import Json

DEFAULT_PATIENT_SYSTEM = "urn:radhub:patient-id"
ENDPOINT_ID = "radhub-dicomweb"


def archive_context() -> AuthContext:
    """The context the archive writes FHIR resources under."""
    return AuthContext("radhub-dicom-archive", None, ScopeSet.parse("system/*.cruds"))


def endpoint_resource(address: str) -> Json:
    """The Endpoint every ImagingStudy points to (R4 Endpoint, dicom-wado-rs)."""
    return {
        "resourceType": "Endpoint",
        "id": ENDPOINT_ID,
        "status": "active",
        "connectionType": {
            "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
            "code": "dicom-wado-rs",
        },
        "payloadType": [{"text": "DICOM"}],
        "payloadMimeType": ["application/dicom"],
        "address": address,
    }


class StudySync:
    """Writes Patients and ImagingStudies for the archive (see the module docstring)."""

    def __init__(
        self, svc: Services, dicomweb_base: str, patient_system: str = DEFAULT_PATIENT_SYSTEM
    ) -> None:
        self._svc = svc
        self._base = dicomweb_base
        self._system = patient_system
        self._auth = archive_context()

    async def ensure_patient(self, study_attrs: Json) -> str:
        """The id of the study's Patient, created from the demographics if unknown."""
        async with self._svc.store.transaction() as tx:
            return await self._patient_in(tx, study_attrs)

    async def sync(self, study_uids: Iterable[str]) -> None:
        """Write (or remove) the ImagingStudy of each study, in one FHIR transaction."""
        async with self._svc.store.transaction() as tx:
            endpoint = await self._ensure_endpoint(tx)
            for uid in dict.fromkeys(study_uids):
                await self._sync_one(tx, uid, endpoint)

    async def _ensure_endpoint(self, tx: Transaction) -> str:
        current = await tx.current("Endpoint", ENDPOINT_ID)
        if current is None or current.deleted:
            resource = endpoint_resource(self._base)
            await crud.update_in(tx, self._svc, self._auth, "Endpoint", ENDPOINT_ID, resource)
        return f"Endpoint/{ENDPOINT_ID}"

    async def _sync_one(self, tx: Transaction, uid: str, endpoint: str) -> None:
        index = self._svc.store.dicom
        study = await index.study(uid)
        if study is None:
            await crud.delete_in(tx, self._svc, self._auth, "ImagingStudy", uid)
            return
        patient = study.patient_ref or await self._patient_in(tx, study.attrs)
        links = StudyLinks(
            patient=f"Patient/{patient}",
            service_request=await self._order(tx, study.attrs),
            endpoint=endpoint,
        )
        resource = map_study(study, await index.series_of(uid), await index.instances(uid), links)
        await crud.update_in(tx, self._svc, self._auth, "ImagingStudy", uid, resource)

    async def _patient_in(self, tx: Transaction, study_attrs: Json) -> str:
        system, value = patient_identifier(study_attrs, self._system)
        resource = map_patient(study_attrs, system, value)
        criteria = f"identifier={quote(system, safe=':/')}|{quote(value, safe='')}"
        outcome = await crud.create_in(tx, self._svc, self._auth, resource, if_none_exist=criteria)
        assert outcome.version is not None
        return outcome.version.id

    async def _order(self, tx: Transaction, study_attrs: Json) -> str | None:
        accession = first(study_attrs, "00080050")
        if not accession:
            return None
        found = await find_conditional(
            tx, self._svc, self._auth, "ServiceRequest", f"identifier={quote(str(accession))}"
        )
        return f"ServiceRequest/{found[0].id}" if len(found) == 1 else None
