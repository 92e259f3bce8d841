"""The ``radhub`` command: ``serve``, ``token`` and ``import`` (see DESIGN.md,
interface contract). Every option also reads ``RADHUB_<OPTION>`` from the
environment; the command line wins.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fhir_server.errors import FhirError
from fhir_server.settings import Settings

# run by fhir_server.cli.auth_admin (imported only when one of them is asked for)
ADMIN_COMMANDS = ("client", "user", "launch", "audit", "keys")


def _env(name: str, default: Any = None) -> Any:
    return os.environ.get(f"RADHUB_{name.upper().replace('-', '_')}", default)


def _issuer_system(text: str) -> tuple[str, str]:
    """``NAME=URI``: the identifier system of Patient IDs a local issuer assigns."""
    name, _, system = text.partition("=")
    if not name.strip() or ":" not in system:
        raise argparse.ArgumentTypeError(f"expected NAME=URI, not {text!r}")
    return name.strip(), system.strip()


def _time_zone(text: str) -> str:
    """An argparse type: an IANA time zone name (``Europe/Berlin``)."""
    try:
        ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"not an IANA time zone: {text!r}") from exc
    return text


def _add_data_dir(parser: argparse.ArgumentParser, *, required: bool) -> None:
    default = _env("data_dir")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=default,
        required=required and default is None,
        help="the data directory",
    )
    parser.add_argument(
        "--mongodb-uri",
        default=_env("mongodb_uri"),
        help="use MongoDB instead of the embedded store",
    )


def _serve_parser(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the server")
    _add_data_dir(p, required=False)
    p.add_argument("--host", default=_env("host", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(_env("port", 8080)))
    p.add_argument("--dicom-port", type=int, default=int(_env("dicom_port", 11112)))
    p.add_argument("--dicom-aet", default=_env("dicom_aet", "RADHUB"))
    p.add_argument("--mllp-port", type=int, default=int(_env("mllp_port", 2575)))
    p.add_argument("--base-url", default=_env("base_url"))
    p.add_argument("--tls-cert", type=Path, default=_env("tls_cert"))
    p.add_argument("--tls-key", type=Path, default=_env("tls_key"))
    p.add_argument(
        "--cors-origin",
        action="append",
        default=None,
        help="allowed browser origin (repeatable; default: any)",
    )
    _archive_options(p)
    _http_options(p)
    _session_options(p)
    p.add_argument(
        "--demo",
        action="store_true",
        default=_env("demo") == "1",
        help="load a small generated demo data set into an empty store",
    )


def _count(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``minimum``."""

    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}")
        return value

    return parse


def _seconds(text: str) -> float:
    """An argparse type: a duration in seconds, more than 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


def _setting(p: argparse.ArgumentParser, name: str, kind: Callable[[str], Any], help: str) -> None:
    """``--name`` for the Settings field ``name``: from the command line, else
    ``RADHUB_NAME``, else the field's default."""
    default = _env(name, getattr(Settings(), name))
    p.add_argument(f"--{name.replace('_', '-')}", type=kind, default=default, help=help)


def _http_options(p: argparse.ArgumentParser) -> None:
    head = "bytes a request's line and header fields may take (431 beyond)"
    _setting(p, "http_header_limit", _count(1024), head)
    head_time = "seconds a client has to send a request's head (408 after)"
    _setting(p, "http_header_timeout", _seconds, head_time)
    body_time = "seconds a request body may stall before the request ends"
    _setting(p, "http_body_timeout", _seconds, body_time)


def _session_options(p: argparse.ArgumentParser) -> None:
    _setting(p, "session_idle", _count(60), "seconds a browser's sign-in session lasts unused")
    _setting(p, "session_max", _count(60), "seconds a browser's sign-in session lasts at most")


def _archive_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dicom-overwrite",
        action="store_true",
        default=_env("dicom_overwrite") == "1",
        help="let a different instance with a known SOP Instance UID replace it",
    )
    no_issuer = "Patient identifier system when DICOM has no IssuerOfPatientID"
    _setting(p, "default_patient_system", str, no_issuer)
    p.add_argument(
        "--patient-issuer",
        action="append",
        type=_issuer_system,
        default=[_issuer_system(i) for i in (_env("patient_issuer") or "").split(",") if i],
        metavar="NAME=URI",
        help="identifier system of a local IssuerOfPatientID (repeatable)",
    )
    zone = "IANA time zone of DICOM times sent without TimezoneOffsetFromUTC"
    _setting(p, "dicom_timezone", _time_zone, zone)
    _setting(p, "qido_max_results", _count(1), "most QIDO-RS results per page")
    decoded = "most bytes one decoding of pixel data may produce (rendering, transcoding)"
    _setting(p, "max_decoded_bytes", _count(1), decoded)
    workers = "processes validating large Bundles (0: in the server process)"
    _setting(p, "validation_workers", _count(0), workers)
    p.add_argument(
        "--audit-in-process",
        action="store_true",
        default=_env("audit_in_process") == "1" or not Settings().audit_process,
        help="write the audit trail in the server's process, not in one beside it",
    )


def _token_parser(sub: Any) -> None:
    p = sub.add_parser("token", help="print an access token signed with the server's key")
    _add_data_dir(p, required=True)
    p.add_argument("--scope", default=_env("scope"), required=_env("scope") is None)
    p.add_argument("--patient", default=_env("patient"))
    p.add_argument("--ttl", type=int, default=int(_env("ttl", 3600)))
    p.add_argument("--subject", default="radhub-admin")
    p.add_argument("--fhir-user", default=None)
    p.add_argument(
        "--base-url",
        default=_env("base_url"),
        help="only if the server has never run on this data dir",
    )


def _import_parser(sub: Any) -> None:
    p = sub.add_parser("import", help="import FHIR Bundles and NDJSON files")
    _add_data_dir(p, required=True)
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--chunk", type=int, default=500, help="resources per transaction")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="radhub", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    _token_parser(sub)
    _import_parser(sub)
    from fhir_server.cli.auth_admin import add_parsers

    add_parsers(sub, _add_data_dir)  # ADMIN_COMMANDS
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    settings = Settings(data_dir=args.data_dir or Path("data"), mongodb_uri=args.mongodb_uri)
    if args.command != "serve":
        return replace(settings, base_url=getattr(args, "base_url", None))
    return replace(
        settings,
        host=args.host,
        port=args.port,
        dicom_port=args.dicom_port,
        dicom_aet=args.dicom_aet,
        mllp_port=args.mllp_port,
        base_url=args.base_url,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        cors_origins=tuple(args.cors_origin or ()),
        dicom_overwrite=args.dicom_overwrite,
        default_patient_system=args.default_patient_system,
        patient_issuers=tuple(args.patient_issuer),
        dicom_timezone=args.dicom_timezone,
        qido_max_results=args.qido_max_results,
        max_decoded_bytes=args.max_decoded_bytes,
        validation_workers=args.validation_workers,
        audit_process=not args.audit_in_process,
        http_header_limit=args.http_header_limit,
        http_header_timeout=args.http_header_timeout,
        http_body_timeout=args.http_body_timeout,
        session_idle=args.session_idle,
        session_max=args.session_max,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = settings_from(args)
    try:
        if args.command == "serve":
            from fhir_server.cli.serve import serve

            with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                return runner.run(serve(settings, demo=args.demo))
        if args.command == "token":
            from fhir_server.cli.admin import audited_token

            token = audited_token(
                settings,
                args.scope,
                patient=args.patient,
                ttl=args.ttl,
                subject=args.subject,
                fhir_user=args.fhir_user,
            )
            print(asyncio.run(token))
            return 0
        if args.command in ADMIN_COMMANDS:
            from fhir_server.cli.auth_admin import run

            return run(args, settings)
        if args.command == "import":
            from fhir_server.cli.importer import run_import

            return asyncio.run(run_import(settings, args.paths, chunk=args.chunk))
    except FhirError as exc:
        print(f"radhub: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (it comes with uvicorn[standard]), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind the HTTP listener ourselves so a taken port fails early and clearly."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only
    # when the protocol says TCP, and without it every response stalls ~40 ms
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


if __name__ == "__main__":
    sys.exit(main())
