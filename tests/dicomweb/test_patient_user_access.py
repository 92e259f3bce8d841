"""A patient user signed in without a launch patient, through the real app.

A user with the ``patient`` role and ``fhirUser`` ``Patient/pat-1`` holds
``user/`` scopes; the role caps them to that Patient's own record, so the FHIR
API lets them read and search their own ImagingStudies (a patient portal). The
DICOM studies behind them are theirs too: every DICOMweb road to pat-1's study
leads there, every one to pat-2's answers as for a study that does not exist
(the same 404 a ``patient/`` token gets), searches find pat-1's studies only,
and STOW-RS and DELETE stay refused. What is not the patient role's own-record
cap (constrained scopes, other roles, a ``patient/`` scope without a launch
patient) is refused as before.
"""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import BASE, MintToken
from tests.dicomweb.archive_app import patients_study
from tests.dicomweb.dicom_data import STOW_TYPE, make_instance, multipart
from tests.dicomweb.test_access_review import (
    NONE,
    OTHER,
    OWN,
    XML,
    caller,
    deeper_roads,
    only_own_studies_found,
    roads,
    studies_named,
)

PAT_1 = "Patient/pat-1"


@pytest.fixture
async def two_patients(client: httpx.AsyncClient, app: FastAPI) -> None:
    """pat-1's study 4.4 and pat-2's 5.5, their ImagingStudies written."""
    await patients_study(client, app, OWN[0], "PAT-1")
    await patients_study(client, app, OTHER[0], "PAT-2")


def patient_user(
    mint: MintToken, scope: str, fhir_user: str | None = PAT_1, **claims: object
) -> str:
    """A token of a user with the patient role, by default pat-1, with no launch patient."""
    return mint(scope, roles=["patient"], fhir_user=fhir_user, **claims)


# v2, v1, a wildcard, every permission (the role keeps r and s), an absolute fhirUser
USER_SCOPES = [
    ("user/ImagingStudy.rs", PAT_1),
    ("user/*.read", PAT_1),
    ("user/*.cruds", f"{BASE}/fhir/{PAT_1}"),
]


@pytest.mark.usefixtures("two_patients")
@pytest.mark.parametrize(("scope", "fhir_user"), USER_SCOPES)
async def test_a_patient_user_reaches_their_own_study_and_no_other_by_any_road(
    app: FastAPI, mint: MintToken, scope: str, fhir_user: str
) -> None:
    """Each WADO-RS and WADO-URI road to pat-1's study is a 200; each to pat-2's, and
    each from pat-1's study into pat-2's series, is the 404 of a study that does
    not exist, body and all."""
    pairs = list(zip(roads(*OTHER), roads(*NONE), strict=True))
    pairs += zip(deeper_roads(OWN[0], *OTHER[1:]), deeper_roads(OWN[0], *NONE[1:]), strict=True)
    async with caller(app, patient_user(mint, scope, fhir_user)) as c:
        for method in ("GET", "HEAD"):
            for own in roads(*OWN):
                assert (await c.request(method, own)).status_code == 200, (method, own)
            for other, absent in pairs:
                refused, gone = await c.request(method, other), await c.request(method, absent)
                assert refused.status_code == 404, (method, other, refused.text[:200])
                assert refused.text == gone.text.replace("9.9", "5.5"), (method, other)


@pytest.mark.usefixtures("two_patients")
async def test_a_patient_users_searches_find_what_fhir_shows_them(
    app: FastAPI, mint: MintToken
) -> None:
    """QIDO-RS at every level, with and without a study, paged, with every field and
    as XML, finds pat-1's study only: the studies of the ImagingStudies the same
    token finds on the FHIR side."""
    async with caller(app, patient_user(mint, "user/*.rs")) as c:
        fhir = (await c.get("/fhir/ImagingStudy")).json()
        shown = {
            i["value"].removeprefix("urn:oid:")
            for e in fhir.get("entry", [])
            for i in e["resource"].get("identifier", [])
            if i.get("system") == "urn:dicom:uid"
        }
        assert shown == {OWN[0]}
        await only_own_studies_found(c, shown)
        own = (await c.get(f"/dicomweb/studies/{OWN[0]}/instances")).json()
        assert studies_named(own) == {OWN[0]}
        xml = await c.get("/dicomweb/instances", params={"includefield": "all", "accept": XML})
        assert xml.status_code == 200 and OWN[1] in xml.text and OTHER[1] not in xml.text


# (scope, roles, fhirUser) -> (QIDO-RS, metadata, rendered) on pat-1's study; no
# launch patient in any
USER_TABLE: dict[tuple[str, str, str | None], tuple[int, int, int]] = {
    ("user/ImagingStudy.rs", "patient", PAT_1): (200, 200, 200),
    ("user/ImagingStudy.r", "patient", PAT_1): (403, 200, 200),  # read without search
    ("user/ImagingStudy.s", "patient", PAT_1): (200, 403, 403),  # search without read
    ("user/Patient.rs", "patient", PAT_1): (403, 403, 403),
    ("user/DiagnosticReport.rs", "patient", PAT_1): (403, 403, 403),
    ("user/ImagingStudy.rs?status=available", "patient", PAT_1): (403, 403, 403),
    ("patient/ImagingStudy.rs", "patient", PAT_1): (403, 403, 403),  # no launch patient
    ("user/ImagingStudy.rs", "patient", "Practitioner/doc"): (403, 403, 403),
    ("user/ImagingStudy.rs", "patient", None): (403, 403, 403),
    ("user/ImagingStudy.rs", "referrer", PAT_1): (403, 403, 403),  # a referrer is a Practitioner
}


@pytest.mark.usefixtures("two_patients")
async def test_what_each_scope_and_role_lets_a_user_without_launch_patient_do(
    app: FastAPI, mint: MintToken
) -> None:
    """Read rights for retrievals, search rights for QIDO-RS, as for ImagingStudy on
    the FHIR side; anything but the patient role's own-record cap on a plain scope
    is refused as it was; pat-2's study is a 404 only where pat-1's is a 200."""
    inst = "/dicomweb/studies/4.4/series/4.4.1/instances/4.4.1.1"
    got: dict[tuple[str, str, str | None], tuple[int, int, int]] = {}
    others, wanted, fhir = {}, {}, {}
    for (scope, role, fhir_user), (_, metadata, _) in USER_TABLE.items():
        key = (scope, role, fhir_user)
        async with caller(app, mint(scope, roles=[role], fhir_user=fhir_user)) as c:
            got[key] = (
                (await c.get("/dicomweb/studies")).status_code,
                (await c.get("/dicomweb/studies/4.4/metadata")).status_code,
                (await c.get(f"{inst}/rendered")).status_code,
            )
            others[key] = (await c.get("/dicomweb/studies/5.5/metadata")).status_code
            fhir[key] = (await c.get("/fhir/ImagingStudy")).status_code
        wanted[key] = 404 if metadata == 200 else metadata
    assert got == USER_TABLE
    assert others == wanted
    # QIDO-RS is refused where a FHIR ImagingStudy search is, and for a constraint
    # the DICOM index cannot apply (refused, never widened)
    constrained = ("user/ImagingStudy.rs?status=available", "patient", PAT_1)
    assert fhir == {key: searched for key, (searched, _, _) in USER_TABLE.items()} | {
        constrained: 200
    }


@pytest.mark.usefixtures("two_patients")
async def test_under_user_scopes_the_fhir_user_not_the_launch_patient_decides(
    app: FastAPI, mint: MintToken
) -> None:
    """pat-1's user launched with pat-2 in context: a ``user/`` scope reaches pat-1's
    record (the role's cap), as on the FHIR side; a ``patient/`` one, both at once,
    which nothing is, so it is refused."""
    token = patient_user(mint, "user/ImagingStudy.rs", patient="pat-2")
    async with caller(app, token) as c:
        assert studies_named((await c.get("/dicomweb/studies")).json()) == {OWN[0]}
        assert (await c.get("/dicomweb/studies/4.4/metadata")).status_code == 200
        assert (await c.get("/dicomweb/studies/5.5/metadata")).status_code == 404
    both = patient_user(mint, "patient/ImagingStudy.rs", patient="pat-2")
    async with caller(app, both) as c:
        assert (await c.get("/dicomweb/studies")).status_code == 403
        assert (await c.get("/dicomweb/studies/5.5/metadata")).status_code == 403


async def test_every_study_is_found_by_a_user_of_another_role(
    app: FastAPI, client: httpx.AsyncClient, mint: MintToken
) -> None:
    """(The searches above could find pat-2's study: a radiologist, even one whose
    fhirUser is a Patient, is not capped to it.)"""
    await patients_study(client, app, OWN[0], "PAT-1")
    await patients_study(client, app, OTHER[0], "PAT-2")
    token = mint("user/ImagingStudy.rs", roles=["radiologist"], fhir_user=PAT_1)
    async with caller(app, token) as c:
        found = (await c.get("/dicomweb/studies")).json()
    assert studies_named(found) == {OWN[0], OTHER[0]}


@pytest.mark.usefixtures("two_patients")
async def test_a_patient_user_stores_and_deletes_nothing(
    app: FastAPI, client: httpx.AsyncClient, mint: MintToken
) -> None:
    """STOW-RS, even into their own study, and DELETE of it: 403, nothing changed."""
    body = multipart(make_instance("4.4", "4.4.1", "4.4.1.9", patient_id="PAT-1", number=9))
    inst = f"/dicomweb/studies/{OWN[0]}/series/{OWN[1]}/instances/{OWN[2]}"
    async with caller(app, patient_user(mint, "user/*.cruds")) as c:
        for url in ("/dicomweb/studies", "/dicomweb/studies/4.4"):
            stored = await c.post(url, content=body, headers={"Content-Type": STOW_TYPE})
            assert stored.status_code == 403, (url, stored.text)
        for url in (inst, "/dicomweb/studies/4.4"):
            assert (await c.delete(url)).status_code == 403, url
    assert await app.state.dicomweb.index.instances("4.4", "4.4.1", "4.4.1.9") == []
    assert (await client.get(f"{inst}/metadata")).status_code == 200
