"""A local development CA and a leaf certificate for localhost, made with `cryptography`.

Why a CA and not one self-signed leaf: clients can then *verify* the server (`curl --cacert
certs/ca.pem`, httpx `verify=`) instead of turning verification off, and one trusted CA keeps working
when the leaf is made anew.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LEAF_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class DevCerts:
    """Paths of the development CA and of the leaf certificate served with its key."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca-key.pem"

    @property
    def cert(self) -> Path:
        return self.directory / "cert.pem"

    @property
    def key(self) -> Path:
        return self.directory / "key.pem"

    def exist(self) -> bool:
        return all(p.is_file() for p in (self.ca, self.cert, self.key))


def ensure_dev_certs(directory: str | Path, *, force: bool = False) -> tuple[DevCerts, bool]:
    """Return the dev certificates under `directory`, making them if missing (or if `force`).

    The second value says whether they were made now, so the caller can tell the user how to trust
    the new CA.
    """
    certs = DevCerts(Path(directory))
    if certs.exist() and not force:
        return certs, False
    certs.directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _make_ca(ca_key)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_cert = _make_leaf(leaf_key, ca_cert, ca_key)
    _write(certs.ca_key, _key_pem(ca_key), private=True)
    _write(certs.key, _key_pem(leaf_key), private=True)
    _write(certs.ca, ca_cert.public_bytes(serialization.Encoding.PEM))
    _write(certs.cert, leaf_cert.public_bytes(serialization.Encoding.PEM))
    return certs, True


def _make_ca(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "h2serve development CA"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"h2serve development CA ({os.uname().nodename})"),
    ])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (
        _builder(name, name, key.public_key(), days=3650)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )


def _make_leaf(key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
               ca_key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    san = x509.SubjectAlternativeName([
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ])
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        _builder(subject, ca_cert.subject, key.public_key(), days=365)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(san, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey,
             days: int) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days))
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
        crl_sign=cert_sign, encipher_only=False, decipher_only=False)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    """Write atomically, keys readable by the owner only."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def trust_hint(certs: DevCerts) -> str:
    """How a user makes clients trust the development CA."""
    return (
        f"made a development CA and a certificate for {', '.join(LEAF_NAMES)} in {certs.directory}/; "
        f"verify with: curl --cacert {certs.ca} ... (or add {certs.ca} to your browser's "
        "trusted authorities)"
    )
