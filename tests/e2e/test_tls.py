"""``radhub serve --tls-cert --tls-key``: the HTTP listener speaks TLS only, and
every absolute URL the server writes (SMART discovery, the FHIR base) is https."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .conftest import ServerProcess


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "radhub test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    return cert_file, key_file


@pytest.mark.slow
def test_the_listener_serves_tls(
    tmp_path: Path, radhub_server: Callable[..., ServerProcess]
) -> None:
    cert, key = self_signed(tmp_path)
    server = radhub_server(tmp_path / "data", None, "--tls-cert", str(cert), "--tls-key", str(key))
    https = f"https://127.0.0.1:{server.port}"
    trust = ssl.create_default_context(cafile=str(cert))
    with httpx.Client(verify=trust, timeout=10) as client:
        assert client.get(f"{https}/healthz").status_code == 200
        smart = client.get(f"{https}/fhir/.well-known/smart-configuration").json()
        assert smart["token_endpoint"].startswith(f"{https}/")
        assert smart["issuer"].startswith("https://")
    with pytest.raises(httpx.HTTPError):  # no plain HTTP on the same port
        httpx.get(f"http://127.0.0.1:{server.port}/healthz", timeout=5).raise_for_status()
    with pytest.raises(httpx.ConnectError):  # and the certificate is really checked
        httpx.get(f"{https}/healthz", timeout=5)
