"""Admin sub-commands for SMART: ``client add``, ``user add``, ``launch`` and
``audit verify`` (DESIGN.md, interface contract), and ``keys rotate``. They open the data dir (or
``--mongodb-uri``) of a server that may be running: the store allows it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fhir_server.audit_chain import verify_chain
from fhir_server.cli.command_audit import CommandAudit, opened
from fhir_server.settings import Settings
from fhir_server.storage.auth_port import ClientKind, ClientRecord
from fhir_server.storage.base import Store
from smart.keys import KeyRing
from smart.launch import Launches, UnknownClient
from smart.secrets import password_helper
from smart.users import Accounts


def add_parsers(sub: Any, add_data_dir: Callable[..., None]) -> None:
    """The sub-parsers of ``client``, ``user``, ``launch``, ``audit`` and ``keys``."""
    client = sub.add_parser("client", help="manage OAuth clients").add_subparsers(
        dest="action", required=True
    )
    p = client.add_parser("add", help="register or replace a client")
    add_data_dir(p, required=True)
    p.add_argument("--client-id", required=True)
    kind = p.add_mutually_exclusive_group(required=True)
    kind.add_argument("--secret", help="confidential symmetric (client_secret_basic/post)")
    kind.add_argument("--jwks", type=Path, help="confidential asymmetric: a JWK Set file")
    kind.add_argument("--jwks-uri", help="confidential asymmetric: a JWK Set URL")
    kind.add_argument("--public", action="store_true", help="public client (PKCE only)")
    p.add_argument("--redirect-uri", action="append", default=[])
    p.add_argument(
        "--post-logout-redirect-uri",
        action="append",
        default=[],
        help="where signing out may lead back to (repeatable)",
    )
    p.add_argument("--scope", default="", help="the most it may ask for (default: any)")
    p.add_argument("--name", default="")

    user = sub.add_parser("user", help="manage users").add_subparsers(dest="action", required=True)
    p = user.add_parser("add", help="create a user")
    add_data_dir(p, required=True)
    p.add_argument("--username", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--role", action="append", required=True, help="repeatable")
    p.add_argument("--fhir-user", default=None, help="Practitioner/ID or Patient/ID")

    p = sub.add_parser("launch", help="print an EHR launch value bound to a context")
    add_data_dir(p, required=True)
    p.add_argument("--client-id", required=True)
    p.add_argument("--patient", required=True)
    p.add_argument("--encounter", default=None)

    audit = sub.add_parser("audit", help="the audit trail").add_subparsers(
        dest="action", required=True
    )
    p = audit.add_parser("verify", help="check the audit trail's hash chain")
    add_data_dir(p, required=True)

    keys = sub.add_parser("keys", help="the server's signing keys").add_subparsers(
        dest="action", required=True
    )
    p = keys.add_parser(
        "rotate", help="make a new signing key; the old one verifies until its tokens expire"
    )
    add_data_dir(p, required=True)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run one of ``fhir_server.cli.ADMIN_COMMANDS``; returns the exit status.
    What a command changes is audited (``command_audit``)."""
    actions: dict[str, Action] = {
        "client": lambda store, audit: _client_add(store, audit, args),
        "user": lambda store, audit: _user_add(store, audit, args),
        "launch": lambda store, audit: _launch(store, audit, args),
        "audit": _audit_verify,
        "keys": lambda store, audit: _rotate_keys(settings, audit),
    }
    return asyncio.run(_with_store(settings, actions[args.command]))


Action = Callable[[Store, CommandAudit], Awaitable[int]]


async def _with_store(settings: Settings, action: Action) -> int:
    async with opened(settings) as (store, audit):
        return await action(store, audit)


async def _client_add(store: Store, audit: CommandAudit, args: argparse.Namespace) -> int:
    kind: ClientKind = "public"
    fields: dict[str, Any] = {}
    if args.secret:
        kind = "symmetric"
        fields["secret_hash"] = await asyncio.to_thread(password_helper().hash, args.secret)
    elif args.jwks or args.jwks_uri:
        kind = "asymmetric"
        fields["jwks"] = _read_jwks(args.jwks) if args.jwks else None
        fields["jwks_uri"] = args.jwks_uri
    client = ClientRecord(
        args.client_id,
        kind,
        redirect_uris=tuple(args.redirect_uri),
        post_logout_redirect_uris=tuple(args.post_logout_redirect_uri),
        scope=args.scope,
        name=args.name,
        **fields,
    )
    replaced = await store.auth.get_client(client.client_id) is not None
    await store.auth.put_client(client)
    what = f"client {client.client_id} {'replaced' if replaced else 'registered'} ({kind})"
    event = "admin-client-update" if replaced else "admin-client-create"
    await audit.record(event, 200 if replaced else 201, what)
    print(what)
    return 0


def _read_jwks(path: Path) -> str:
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise SystemExit(f"radhub: {path} is not a JWK Set")
    if any("d" in key for key in data["keys"]):
        raise SystemExit(f"radhub: {path} holds a private key; register the public half only")
    return json.dumps(data)


async def _user_add(store: Store, audit: CommandAudit, args: argparse.Namespace) -> int:
    try:
        user = await Accounts(store.auth).add(
            args.username, args.password, args.role, args.fhir_user
        )
    except ValueError as exc:
        return await _refused(audit, "admin-user-create", str(exc))
    what = f"user {user.email} created ({', '.join(user.roles)})"
    await audit.record("admin-user-create", 201, what)
    print(what)
    return 0


async def _launch(store: Store, audit: CommandAudit, args: argparse.Namespace) -> int:
    try:
        launch = await Launches(store.auth).mint(args.client_id, args.patient, args.encounter)
    except UnknownClient as exc:
        return await _refused(audit, "launch", str(exc))
    what = f"launch minted for client {args.client_id}"
    await audit.record("launch", 200, what, resource_type="Patient", resource_id=args.patient)
    print(launch)
    return 0


async def _refused(audit: CommandAudit, event: str, reason: str) -> int:
    await audit.record(event, 400, reason)
    print(f"radhub: {reason}", file=sys.stderr)
    return 2


async def _rotate_keys(settings: Settings, audit: CommandAudit) -> int:
    """A running server signs with the new key from its next token on (it watches
    the key file); tokens signed with the old one stay valid until they expire."""
    ring = KeyRing.open(settings.data_dir)
    old = ring.active_key.kid
    new = ring.rotate()
    what = f"signing key {new.kid} active; {old} retired (verifies until its tokens expire)"
    await audit.record("keys-rotate", 200, what)
    print(what)
    return 0


async def _audit_verify(store: Store, audit: CommandAudit) -> int:
    """Not itself audited: an event per check would move the head it prints, which
    is what an operator records elsewhere to catch the newest events cut off."""
    report = await verify_chain(store)
    print(report.summary())
    return 0 if report.ok else 1
