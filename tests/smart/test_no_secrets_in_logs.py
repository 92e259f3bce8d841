"""Tokens, codes, secrets and passwords never reach the logs, even at DEBUG and
on the error paths (a wrong secret, a revoked token, a bad login)."""

from __future__ import annotations

import logging

import pytest

from .conftest import PASSWORD, Smart, bearer
from .test_refresh_and_revoke import SECRET, basic, code_tokens, confidential, refresh


async def test_secrets_never_reach_the_logs(smart: Smart, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    await confidential(smart)
    tokens = await code_tokens(smart, "user/Patient.rs offline_access")
    rotated = (await refresh(smart, tokens["refresh_token"])).json()
    await smart.http.get("/fhir/Patient", headers=bearer(rotated["access_token"]))
    # error paths, where a careless log line would print what it refused
    wrong = await smart.http.post(
        "/auth/token",
        data={"grant_type": "refresh_token", "refresh_token": rotated["refresh_token"]},
        headers=basic("app", "not-the-secret"),
    )
    assert wrong.status_code == 401
    await smart.http.post("/auth/revoke", data={"token": rotated["access_token"]},
                          headers=basic("app", SECRET))  # fmt: skip
    refused = await smart.http.get("/fhir/Patient", headers=bearer(rotated["access_token"]))
    assert refused.status_code == 401
    flow = smart.request("user/Patient.rs")
    await smart.login(flow, "rita", "not-the-password")
    assert caplog.records  # the capture works: there were log records to look through
    text = caplog.text + "".join(str(r.args) for r in caplog.records)
    for secret in (
        tokens["access_token"],
        tokens["refresh_token"],
        rotated["access_token"],
        rotated["refresh_token"],
        SECRET,
        PASSWORD,
        "not-the-password",
        "not-the-secret",
    ):
        assert secret not in text
