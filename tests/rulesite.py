"""Helpers shared by the site-rule tests (test_rules, test_cors, test_auth, test_rulespec): a small site,
htpasswd files as `htpasswd -B` writes them, and curl over either protocol with its head parsed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import bcrypt

PAGES = {
    "index.html": "<!doctype html><title>app</title><h1>the app shell</h1>\n",
    "404.html": "<!doctype html><title>missing</title><h1>not here</h1>\n",
    "about.html": "<!doctype html><title>about</title>\n",
    "admin.html": "<!doctype html><title>admin</title>\n",
    "app.js": "console.log('app');\n",
    "static/app.css": "body { color: red }\n",
    "static/sub/deep.txt": "deep\n",
    "private/index.html": "<!doctype html><title>private</title>\n",
    "private/secret.txt": "the secret\n",
    "docs/index.html": "<!doctype html><title>docs</title>\n",
}

CURL_PROTOCOLS = {"h2": "--http2", "http/1.1": "--http1.1"}


def make_site(root: Path) -> Path:
    """The pages above under `root` (made), served with `root=`."""
    for name, text in PAGES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def curl(url: str, ca_file: str, proto: str, *args: str) -> tuple[int, dict[str, list[str]], str]:
    """(status, headers by lower-case name, body) of one request with curl over `proto` (after any
    1xx: curl prints each head it gets)."""
    out = subprocess.run(
        ["curl", "-sS", CURL_PROTOCOLS[proto], "--cacert", ca_file, "-D", "-", *args, url],
        capture_output=True, timeout=30, check=True).stdout.decode()
    head, _, body = out.partition("\r\n\r\n")
    while head.split()[1].startswith("1"):  # a 103 Early Hints before the answer
        head, _, body = body.partition("\r\n\r\n")
    lines = head.split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return status, headers, body


def htpasswd_file(directory: Path, users: dict[str, str], rounds: int = 4) -> Path:
    """An htpasswd file as `htpasswd -B` writes it ($2y$ hashes)."""
    path = directory / "users.htpasswd"
    lines = [f"{user}:" + bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds)).decode()
             .replace("$2b$", "$2y$", 1) for user, pw in users.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def throwaway_ca(directory: Path, names: list[str]) -> tuple[str, str, str]:
    """(CA file, certificate, key) of a new CA of its own and a leaf for `names`, for SNI tests:
    a client trusting this CA verifies only that leaf."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"test CA for {names[0]}")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False),
                         critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name).public_key(leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    files[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    files[2].write_bytes(leaf_key.private_bytes(serialization.Encoding.PEM,
                                                serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    return str(files[0]), str(files[1]), str(files[2])
