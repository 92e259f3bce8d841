"""Codes outside a required binding are refused (``resources.bindings``): the
models fhir.resources builds do not check them."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from fhir_server.errors import InvalidResource
from fhir_server.resources.validate import validate_resource

CODE = {"text": "CT head"}


@pytest.mark.parametrize(
    ("resource", "where"),
    [
        ({"resourceType": "Patient", "gender": "sometimes"}, "Patient.gender"),
        ({"resourceType": "Patient", "gender": "Male"}, "Patient.gender"),  # codes are exact
        ({"resourceType": "Patient", "contact": [{"gender": "x"}]}, "Patient.contact[0].gender"),
        ({"resourceType": "Patient", "name": [{}, {"use": "alias"}]}, "Patient.name[1].use"),
        (
            {"resourceType": "Patient", "telecom": [{"system": "phone", "use": "cell"}]},
            "Patient.telecom[0].use",
        ),
        (
            {"resourceType": "DiagnosticReport", "status": "Final", "code": CODE},
            "DiagnosticReport.status",
        ),
        (
            {
                "resourceType": "ServiceRequest",
                "status": "active",
                "intent": "orders",
                "subject": {"reference": "Patient/p"},
            },
            "ServiceRequest.intent",
        ),
        (
            {
                "resourceType": "ImagingStudy",
                "status": "done",
                "subject": {"reference": "Patient/p"},
            },
            "ImagingStudy.status",
        ),
        (
            {"resourceType": "Appointment", "status": "booked", "participant": [{"status": "yes"}]},
            "Appointment.participant[0].status",
        ),
        (
            {
                "resourceType": "Observation",
                "status": "final",
                "code": CODE,
                "contained": [{"resourceType": "Patient", "id": "c", "gender": "no"}],
            },
            "Observation.contained[0].gender",
        ),
        (
            {"resourceType": "Encounter", "status": "gone", "class": {"code": "AMB"}},
            "Encounter.status",
        ),
    ],
)
def test_a_code_outside_its_required_value_set_is_refused(
    resource: dict[str, Any], where: str
) -> None:
    with pytest.raises(InvalidResource) as raised:
        validate_resource(resource)
    [issue] = raised.value.issues
    assert issue.code == "code-invalid" and issue.expression == (where,)


@pytest.mark.parametrize(
    "resource",
    [
        {"resourceType": "Patient", "gender": "unknown", "name": [{"use": "maiden"}]},
        # codes past the "+" in the definition's short list: the whole value set holds
        {"resourceType": "DiagnosticReport", "status": "amended", "code": CODE},
        {"resourceType": "DiagnosticReport", "status": "entered-in-error", "code": CODE},
        {"resourceType": "Observation", "status": "corrected", "code": CODE},
        {"resourceType": "Encounter", "status": "entered-in-error", "class": {"code": "AMB"}},
        # a primitive's extension sits beside it, not in it
        {"resourceType": "Patient", "gender": "other", "_gender": {"extension": []}},
    ],
)
def test_codes_in_the_value_set_pass(resource: dict[str, Any]) -> None:
    assert validate_resource(resource) == resource["resourceType"]


async def test_the_refusal_is_an_operation_outcome(client: httpx.AsyncClient) -> None:
    response = await client.post("/fhir/Patient", json={"resourceType": "Patient", "gender": "f"})
    assert response.status_code == 400
    [issue] = [i for i in response.json()["issue"] if i["code"] == "code-invalid"]
    assert issue["expression"] == ["Patient.gender"] and "female" in issue["diagnostics"]
