"""Property-based: whatever is thrown at the API, it never answers 5xx.

One app (and one client) serves every example of a test, on one event loop
driven from the synchronous test (hypothesis does not run async tests itself).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fhir_server.app import create_app
from fhir_server.resources.types import SUPPORTED_TYPES
from fhir_server.settings import Settings
from smart.tokens import mint_access_token

BASE = "http://radhub.test"
TYPES = sorted(SUPPORTED_TYPES)
FIELDS = [
    "id",
    "meta",
    "text",
    "identifier",
    "name",
    "status",
    "intent",
    "subject",
    "code",
    "gender",
    "birthDate",
    "active",
    "participant",
    "series",
    "extension",
    "contained",
    "effectiveDateTime",
    "issued",
    "note",
    "resourceType",
    "entry",
    "request",
    "reference",
]

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["Patient/1", "urn:uuid:1", "2020-01-01", "final", "Patient?_id=1", ""])
)
json_values = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=15,
)
resources = st.builds(
    lambda rtype, body: {**body, "resourceType": rtype},
    st.sampled_from([*TYPES, "Bundle", "Foo", ""]),
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6),
)
methods = st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "BREW"])
entry_urls = st.sampled_from(
    [
        "Patient",
        "Patient/1",
        "Patient/1/_history/1",
        "Patient?_id=1",
        "Foo/1",
        "",
        "/",
        "Patient?bogus=1",
        "ServiceRequest?subject=Patient/1",
        "http://elsewhere/Patient/1",
        "Patient/_history",
        "metadata",
        "Patient/1/$everything",
    ]
) | st.text(max_size=12)
entries = st.fixed_dictionaries(
    {},
    optional={
        "fullUrl": st.sampled_from(["urn:uuid:1", "urn:uuid:2", "Patient/1"]) | st.text(max_size=8),
        "resource": resources | json_values,
        "request": st.fixed_dictionaries(
            {"method": methods, "url": entry_urls},
            optional={
                "ifNoneExist": st.sampled_from(["_id=1", "bogus=1", ""]),
                "ifMatch": st.sampled_from(['W/"1"', "x", ""]),
            },
        )
        | json_values,
    },
)
bundles = st.builds(
    lambda kind, items: {"resourceType": "Bundle", "type": kind, "entry": items},
    st.sampled_from(["transaction", "batch", "collection", "searchset", 3]),
    st.lists(entries | json_values, max_size=6),
)

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class ApiRunner:
    """One app on one event loop for all the examples of a test: building an app per
    example (keys, schema) would cost more than the examples themselves."""

    def __init__(self, data_dir: Path) -> None:
        self._runner = asyncio.Runner()
        self._data_dir = data_dir
        self._stack = contextlib.AsyncExitStack()
        self.client: httpx.AsyncClient | None = None

    def __enter__(self) -> ApiRunner:
        self._runner.__enter__()
        self._runner.run(self._start())
        return self

    async def _start(self) -> None:
        app = create_app(
            Settings(
                data_dir=self._data_dir,
                base_url=BASE,
                audit_flush_interval=0.05,
                audit_process=False,
            )
        )
        await self._stack.enter_async_context(app.router.lifespan_context(app))
        token = mint_access_token(
            app.state.keyring,
            issuer=app.state.identity.issuer,
            audience=app.state.identity.audience,
            scope="system/*.cruds",
            subject="fuzzer",
        )
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
        self.client = await self._stack.enter_async_context(
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url=BASE, headers=headers
            )
        )

    def run(self, work: Callable[[httpx.AsyncClient], Awaitable[None]]) -> None:
        assert self.client is not None
        self._runner.run(work(self.client))

    def __exit__(self, *exc: object) -> None:
        try:
            self._runner.run(self._stack.aclose())
        finally:
            self._runner.__exit__(None, None, None)


def _check(r: httpx.Response, what: Any) -> None:
    assert r.status_code < 500, (what, r.status_code, r.text[:500])
    if r.status_code >= 400:
        assert r.json()["resourceType"] == "OperationOutcome", r.text


def test_random_resources_never_5xx(tmp_path: Path) -> None:
    @SETTINGS
    @given(
        resource=resources | json_values,
        rtype=st.sampled_from([*TYPES[:6], "Foo"]),
        rid=st.sampled_from(["1", "x-y", "a_b", "Z" * 65]),
    )
    def run(resource: Any, rtype: str, rid: str) -> None:
        async def work(client: httpx.AsyncClient) -> None:
            _check(await client.post(f"/fhir/{rtype}", json=resource), resource)
            if isinstance(resource, dict):
                body = {**resource, "id": rid}
            else:
                body = resource
            _check(await client.put(f"/fhir/{rtype}/{rid}", json=body), body)
            _check(await client.put(f"/fhir/{rtype}?_id={rid}", json=body), body)
            _check(
                await client.patch(
                    f"/fhir/{rtype}/{rid}",
                    json=[{"op": "add", "path": "/text", "value": resource}],
                    headers={"Content-Type": "application/json-patch+json"},
                ),
                resource,
            )
            _check(await client.get(f"/fhir/{rtype}/{rid}"), rid)

        api.run(work)

    with ApiRunner(tmp_path / "data") as api:
        run()


def test_random_bundles_never_5xx(tmp_path: Path) -> None:
    @SETTINGS
    @given(bundle=bundles)
    def run(bundle: dict[str, Any]) -> None:
        async def work(client: httpx.AsyncClient) -> None:
            await client.put("/fhir/Patient/1", json={"resourceType": "Patient", "id": "1"})
            r = await client.post("/fhir", json=bundle)
            _check(r, bundle)
            if r.status_code == 200:
                assert r.json()["type"] in ("transaction-response", "batch-response")
                assert len(r.json()["entry"]) == len(bundle["entry"])

        api.run(work)

    with ApiRunner(tmp_path / "data") as api:
        run()


def test_random_patches_and_queries_never_5xx(tmp_path: Path) -> None:
    @SETTINGS
    @given(
        ops=json_values,
        query=st.lists(
            st.tuples(
                st.sampled_from(
                    [
                        "_id",
                        "_count",
                        "_since",
                        "_at",
                        "name",
                        "_sort",
                        "_include",
                        "subject",
                        "_format",
                        "_summary",
                        "_elements",
                        "_total",
                    ]
                )
                | st.text(max_size=6),
                st.text(max_size=12),
            ),
            max_size=4,
        ),
    )
    def run(ops: Any, query: list[tuple[str, str]]) -> None:
        async def work(client: httpx.AsyncClient) -> None:
            await client.put("/fhir/Patient/1", json={"resourceType": "Patient", "id": "1"})
            _check(
                await client.patch(
                    "/fhir/Patient/1",
                    json=ops,
                    headers={"Content-Type": "application/json-patch+json"},
                ),
                ops,
            )
            for url in (
                "/fhir/Patient",
                "/fhir/Patient/_history",
                "/fhir/_history",
                "/fhir/Patient/1",
                "/fhir",
            ):
                _check(await client.get(url, params=query), (url, query))

        api.run(work)

    with ApiRunner(tmp_path / "data") as api:
        run()
