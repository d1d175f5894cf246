"""Development certificates (h2serve/certs.py): a real CA whose leaf verifies for localhost names."""

from __future__ import annotations

import ipaddress
import ssl
import stat
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from conftest import RunningServer, open_tls
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from h2serve.net.certs import LEAF_NAMES, DevCerts, ensure_dev_certs, trust_hint


@pytest.fixture
def dev(tmp_path: Path) -> DevCerts:
    made, fresh = ensure_dev_certs(tmp_path / "certs")
    assert fresh
    return made


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def handshake(dev: DevCerts, server_hostname: str, ca: Path | None = None) -> None:
    """A complete TLS handshake in memory: server with the leaf, client verifying with `ca`."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(dev.cert, dev.key)
    client_ctx = ssl.create_default_context(cafile=str(ca or dev.ca))
    bios = [ssl.MemoryBIO() for _ in range(4)]
    client = client_ctx.wrap_bio(bios[0], bios[1], server_hostname=server_hostname)
    server = server_ctx.wrap_bio(bios[2], bios[3], server_side=True)
    done = {client: False, server: False}
    for _ in range(20):
        for end in (client, server):
            if not done[end]:
                try:
                    end.do_handshake()
                    done[end] = True
                except ssl.SSLWantReadError:
                    pass
        bios[2].write(bios[1].read())  # client -> server
        bios[0].write(bios[3].read())  # server -> client
        if all(done.values()):
            return
    raise AssertionError("handshake did not complete")


def test_files_made_with_private_keys_0600(dev: DevCerts) -> None:
    """ca.pem, cert.pem, key.pem (and the CA key) exist; keys are readable by the owner only."""
    for path in (dev.ca, dev.cert, dev.key, dev.ca_key):
        assert path.is_file(), path
    for key in (dev.key, dev.ca_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    for cert in (dev.ca, dev.cert):
        assert stat.S_IMODE(cert.stat().st_mode) & 0o077 == 0o044, cert
    assert dev.exist()
    assert not list(dev.directory.glob("*.tmp"))


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1", "::1"])
def test_leaf_verifies_against_ca(dev: DevCerts, name: str) -> None:
    """The ssl module verifies the leaf with the CA, by every name the leaf is for."""
    handshake(dev, name)


@pytest.mark.parametrize("name", ["example.com", "127.0.0.2", "www.localhost"])
def test_leaf_rejected_for_other_names(dev: DevCerts, name: str) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        handshake(dev, name)


def test_leaf_rejected_by_another_ca(dev: DevCerts, tmp_path: Path) -> None:
    """Verification really depends on the CA: another dev CA does not vouch for this leaf."""
    other, _ = ensure_dev_certs(tmp_path / "other")
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        handshake(dev, "localhost", ca=other.ca)


def test_sans_exactly_localhost_names(dev: DevCerts) -> None:
    """SubjectAltName: exactly DNS localhost, IP 127.0.0.1 and IP ::1."""
    san = load(dev.cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert sorted(map(str, san.get_values_for_type(x509.IPAddress))) == ["127.0.0.1", "::1"]
    assert len(list(san)) == 3
    assert set(LEAF_NAMES) == {"localhost", "127.0.0.1", "::1"}
    assert ipaddress.ip_address("::1") in san.get_values_for_type(x509.IPAddress)


def test_ca_and_leaf_roles(dev: DevCerts) -> None:
    """The CA may sign certificates and is self-issued; the leaf is a server-auth end entity."""
    ca, leaf = load(dev.ca), load(dev.cert)
    assert ca.issuer == ca.subject
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert leaf.issuer == ca.subject
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert not leaf.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    leaf.verify_directly_issued_by(ca)
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert 364 <= lifetime.days <= 366


def test_reused_unless_forced(dev: DevCerts) -> None:
    """A second call keeps the same files; force=True makes a new CA and leaf."""
    before = {p: p.read_bytes() for p in (dev.ca, dev.cert, dev.key, dev.ca_key)}
    again, made = ensure_dev_certs(dev.directory)
    assert not made and again == dev
    assert {p: p.read_bytes() for p in before} == before
    _, made = ensure_dev_certs(dev.directory, force=True)
    assert made
    for path, data in before.items():
        assert path.read_bytes() != data, path
    handshake(dev, "localhost")


def test_partial_set_remade(dev: DevCerts) -> None:
    """A set with a file missing is made anew, consistently (the new leaf verifies with the new CA)."""
    old_ca = dev.ca.read_bytes()
    dev.key.unlink()
    _, made = ensure_dev_certs(dev.directory)
    assert made
    assert dev.ca.read_bytes() != old_ca
    handshake(dev, "127.0.0.1")


def test_trust_hint_names_ca(dev: DevCerts) -> None:
    hint = trust_hint(dev)
    assert f"curl --cacert {dev.ca}" in hint
    assert "localhost, 127.0.0.1, ::1" in hint


def test_server_with_dev_certs_verifies(dev: DevCerts, make_server: Callable[..., RunningServer]) -> None:
    """Served by the real server, the leaf verifies over a socket by name and by IP, with httpx too."""
    server = make_server(cert=str(dev.cert), key=str(dev.key))
    with open_tls(server.port, str(dev.ca), alpn=["h2"]) as sock:
        assert sock.selected_alpn_protocol() == "h2"
        assert sock.getpeercert()["subjectAltName"] == (  # type: ignore[index]
            ("DNS", "localhost"), ("IP Address", "127.0.0.1"), ("IP Address", "0:0:0:0:0:0:0:1"))
    with httpx.Client(http2=True, verify=ssl.create_default_context(cafile=str(dev.ca))) as client:
        for host in ("localhost", "127.0.0.1"):
            r = client.get(f"https://{host}:{server.port}/about")
            assert r.status_code == 200 and r.http_version == "HTTP/2"


def test_server_makes_dev_certs_when_none_given(tmp_path: Path,
                                                make_server: Callable[..., RunningServer]) -> None:
    """In-process, with no cert/key, the server makes them under certs_dir and reports the CA."""
    certs_dir = tmp_path / "made-here"
    server = make_server(cert=None, key=None, certs_dir=str(certs_dir))
    assert server.server.ca_file == certs_dir / "ca.pem"
    with open_tls(server.port, str(certs_dir / "ca.pem")) as sock:
        assert sock.version() in ("TLSv1.2", "TLSv1.3")
