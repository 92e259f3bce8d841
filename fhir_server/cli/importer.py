"""``radhub import``: FHIR Bundles and NDJSON files into the store, with a progress bar.

Transaction and batch Bundles are processed as such; any other Bundle (collection,
searchset) and NDJSON lines are upserted resource by resource (PUT by id when the
resource has one, create otherwise), in transactions of ``chunk`` resources.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from rich.progress import Progress

from fhir_server.access import AccessPolicy, PatientCompartment
from fhir_server.app import prepare_data_dir
from fhir_server.cli.command_audit import CommandAudit
from fhir_server.demo import DEMO_CONTEXT
from fhir_server.errors import FhirError, InvalidRequest
from fhir_server.interactions.services import Services
from fhir_server.interactions.transaction import batch, transaction
from fhir_server.search.registry import SearchRegistry
from fhir_server.settings import Settings
from fhir_server.storage.factory import build_store

IMPORT_CONTEXT = DEMO_CONTEXT


def _files(paths: list[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix in (".json", ".ndjson"))
        elif path.exists():
            yield path
        else:
            raise InvalidRequest(f"{path} does not exist")


def _object(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InvalidRequest(f"{where}: not a JSON object (a FHIR resource or Bundle)")
    return data


def _document(path: Path) -> dict[str, Any]:
    return _object(orjson.loads(path.read_bytes()), str(path))


def _resources(path: Path, document: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """The loose resources of a file: NDJSON lines or a non-transaction Bundle's entries."""
    if path.suffix == ".ndjson":
        with path.open("rb") as lines:
            for number, line in enumerate(lines, 1):
                if line.strip():
                    try:
                        data = orjson.loads(line)
                    except orjson.JSONDecodeError as exc:
                        raise InvalidRequest(f"{path}:{number}: not JSON: {exc}") from None
                    yield _object(data, f"{path}:{number}")
        return
    document = _document(path) if document is None else document
    if document.get("resourceType") != "Bundle":
        yield document
        return
    entries = document.get("entry", [])
    if not isinstance(entries, list):
        raise InvalidRequest(f"{path}: Bundle.entry is not a list")
    for number, entry in enumerate(entries):
        where = f"{path}: Bundle.entry[{number}]"
        entry = _object(entry, where)
        search = entry.get("search")
        if isinstance(search, dict) and search.get("mode") == "outcome":
            continue  # a searchset's OperationOutcome about the search, not data
        if not isinstance(entry.get("resource"), dict):
            raise InvalidRequest(f"{where} has no resource (a deletion cannot be imported)")
        yield entry["resource"]


def upsert_bundle(resources: list[dict[str, Any]]) -> dict[str, Any]:
    """A transaction Bundle that writes ``resources`` (PUT by id, else POST)."""
    entries = []
    for resource in resources:
        rtype, rid = resource.get("resourceType"), resource.get("id")
        request = (
            {"method": "PUT", "url": f"{rtype}/{rid}"}
            if rid
            else {"method": "POST", "url": str(rtype)}
        )
        entries.append({"resource": resource, "request": request})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


class ImportFailed(Exception):
    """A file failed after ``imported`` of its resources were committed."""

    def __init__(self, cause: Exception, imported: int) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.imported = imported


async def import_file(
    svc: Services, audit: CommandAudit, path: Path, chunk: int, progress: Progress
) -> int:
    """Import one file; raises ImportFailed (with what was committed before the
    error). Each commit, and the error, is audited."""
    done = 0
    try:
        document = _document(path) if path.suffix == ".json" else None
        if document is not None and document.get("resourceType") == "Bundle":
            kind = document.get("type")
            if kind == "transaction":
                result = await transaction(svc, IMPORT_CONTEXT, document)
                done = len(result["entry"])
                summary = f"{done} resources (a transaction)"
                await audit.record("import", 200, summary, what=str(path))
                return done
            if kind == "batch":
                return await _import_batch(svc, audit, path, document)
        task = progress.add_task(path.name, total=None)
        pending: list[dict[str, Any]] = []
        for resource in _resources(path, document):
            pending.append(resource)
            if len(pending) >= chunk:
                done += await _flush(svc, audit, path, pending, done, progress, task)
        done += await _flush(svc, audit, path, pending, done, progress, task)
    except (FhirError, orjson.JSONDecodeError, OSError) as exc:
        status = exc.status if isinstance(exc, FhirError) else 400
        await audit.record("import", status, _explain(exc)[:1000], what=str(path))
        raise ImportFailed(exc, done) from exc
    return done


async def _import_batch(
    svc: Services, audit: CommandAudit, path: Path, document: dict[str, Any]
) -> int:
    """A batch Bundle: each entry commits on its own; any that failed make the
    file fail, after the others were committed."""
    result = await batch(svc, IMPORT_CONTEXT, document)
    failed = [
        f"Bundle.entry[{number}]: {entry['response']['status']}: {_diagnostics(entry)}"
        for number, entry in enumerate(result["entry"])
        if not entry["response"]["status"].startswith("2")
    ]
    done = len(result["entry"]) - len(failed)
    summary = f"{done} resources (a batch); {len(failed)} entries failed"
    await audit.record("import-batch", 200, summary, what=str(path))
    if failed:
        more = f"\n  ... and {len(failed) - 20} more" if len(failed) > 20 else ""
        message = f"{len(failed)} batch entries failed:\n  " + "\n  ".join(failed[:20]) + more
        raise ImportFailed(InvalidRequest(message), done)
    return done


def _diagnostics(entry: dict[str, Any]) -> str:
    issues = entry["response"].get("outcome", {}).get("issue", [])
    return "; ".join(str(i.get("diagnostics", i.get("code", ""))) for i in issues[:3])


def _explain(exc: Exception) -> str:
    """An error with its OperationOutcome issues (which resource, which element)."""
    lines = [str(exc)]
    for issue in getattr(exc, "issues", ())[:20]:
        where = f" at {', '.join(issue.expression)}" if issue.expression else ""
        lines.append(f"  {issue.severity}: {issue.diagnostics}{where}")
    return "\n".join(lines)


async def _flush(
    svc: Services,
    audit: CommandAudit,
    path: Path,
    pending: list[dict[str, Any]],
    before: int,
    progress: Progress,
    task: Any,
) -> int:
    if not pending:
        return 0
    await transaction(svc, IMPORT_CONTEXT, upsert_bundle(pending))
    count = len(pending)
    summary = f"{count} resources (entries {before + 1} to {before + count})"
    await audit.record("import", 200, summary, what=str(path))
    pending.clear()
    progress.advance(task, count)
    return count


async def run_import(settings: Settings, paths: list[Path], *, chunk: int = 500) -> int:
    prepare_data_dir(settings)
    registry = SearchRegistry.load().with_base_url(settings.fhir_base)
    store = build_store(settings, registry)
    await store.start()
    svc = Services(store, registry, AccessPolicy(PatientCompartment.load()), settings.fhir_base)
    audit = CommandAudit(store, settings.data_dir)
    total = 0
    try:
        with Progress() as progress:
            for path in _files(paths):
                try:
                    total += await import_file(svc, audit, path, chunk, progress)
                except ImportFailed as exc:
                    total += exc.imported
                    message = _explain(exc.cause)
                    if not message.startswith(str(path)):
                        message = f"{path}: {message}"
                    progress.console.print(message, style="red", markup=False)  # file text
                    print(f"imported {total} resources before the error (committed, not undone)")
                    return 1
    finally:
        audit.close()
        await store.close()
    print(f"imported {total} resources")
    return 0
