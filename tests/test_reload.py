"""SIGHUP (h2serve/reload.py): the certificate and the TOML configuration read again while
connections carry on; a broken one reported in one line and the old one kept; with workers, every
worker reloads.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import signal
import socket
import ssl
from pathlib import Path

import httpx
import pytest
from conftest import ServerProcess, file_sha256, start_curl, wait_for
from cryptography import x509
from rulesite import throwaway_ca
from test_vhosts import curl_sni, two_sites, vhost_server  # noqa: F401  # two_sites: its fixture

from h2serve.net.certs import DevCerts, ensure_dev_certs
from h2serve.reload import reload
from h2serve.workers import worker_pids


@pytest.fixture(scope="module")
def second_certs(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    """Another CA and localhost certificate: what a renewal puts in place of the first."""
    made, _ = ensure_dev_certs(tmp_path_factory.mktemp("second"))
    return made


def file_serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def served_serial(port: int) -> int:
    """The serial number of the certificate a new TLS connection to `port` gets."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def install(source: DevCerts, cert: Path, key: Path) -> None:
    """Put `source`'s certificate and key at the paths the server reads, as a renewal does."""
    shutil.copyfile(source.cert, cert)
    shutil.copyfile(source.key, key)


def reloaded(proc: ServerProcess, since: int, who: str = "h2serve:") -> bool:
    return any(f"{who} SIGHUP: reloaded" in line for line in proc.stderr_lines[since:])


def test_sighup_swaps_the_certificate_while_a_download_completes(
        spawn_server, certs: DevCerts, second_certs: DevCerts, big_file, ca_file: str,
        tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    install(certs, cert, key)
    proc = spawn_server("--cert", str(cert), "--key", str(key), "--templates", str(big_file.templates),
                        "--static", str(big_file.static), "--access-log", "off")
    assert served_serial(proc.port) == file_serial(certs.cert)
    out = tmp_path / "download.bin"
    curl = start_curl(f"https://localhost:{proc.port}{big_file.url_path}", ca_file, out, "20M")
    try:
        wait_for(lambda: out.exists() and out.stat().st_size > 2 << 20)
        install(second_certs, cert, key)
        since = len(proc.stderr_lines)
        proc.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: reloaded(proc, since))
        assert served_serial(proc.port) == file_serial(second_certs.cert)  # a new connection
        renewed = ssl.create_default_context(cafile=str(second_certs.ca))
        r = httpx.get(f"https://localhost:{proc.port}/about", verify=renewed)
        assert r.status_code == 200
        assert curl.poll() is None  # the old connection is still downloading, under the old one
        stdout, stderr = curl.communicate(timeout=60)
    finally:
        if curl.poll() is None:
            curl.kill()
    assert curl.returncode == 0, stderr
    assert stdout == f"2 200 {big_file.size}"
    assert file_sha256(out) == big_file.sha256


def test_a_broken_certificate_keeps_the_old_one(spawn_server, certs: DevCerts, tmp_path: Path,
                                                verify: ssl.SSLContext) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    install(certs, cert, key)
    proc = spawn_server("--cert", str(cert), "--key", str(key))
    cert.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    since = len(proc.stderr_lines)
    proc.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: any(" ERROR " in line for line in proc.stderr_lines[since:]))
    errors = [line for line in proc.stderr_lines[since:] if " ERROR " in line]
    assert len(errors) == 1 and "keeping the old one" in errors[0] and str(cert) in errors[0], errors
    assert served_serial(proc.port) == file_serial(certs.cert)
    assert httpx.get(f"https://localhost:{proc.port}/about", verify=verify).status_code == 200
    assert proc.proc.poll() is None


def test_sighup_reloads_the_config_for_new_connections_only(spawn_server, tmp_path: Path,
                                                            verify: ssl.SSLContext) -> None:
    toml = tmp_path / "h2serve.toml"
    toml.write_text('html-cache-control = "no-cache"\n')
    proc = spawn_server("--config", str(toml), "--access-log", "off")
    url = f"https://localhost:{proc.port}/about"
    with httpx.Client(http2=True, verify=verify) as before:
        assert before.get(url).headers["cache-control"] == "no-cache"
        toml.write_text('html-cache-control = "max-age=5"\nh2c-bind = ["127.0.0.1:0"]\n'
                        'log-level = "debug"\n')
        since = len(proc.stderr_lines)
        proc.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: reloaded(proc, since))
        with httpx.Client(http2=True, verify=verify) as after:
            assert after.get(url).headers["cache-control"] == "max-age=5"
        assert before.get(url).headers["cache-control"] == "no-cache"  # opened before: untouched
    restart = [line for line in proc.stderr_lines[since:] if "takes a restart" in line]
    assert len(restart) == 1 and "--h2c-bind changed" in restart[0] and "WARNING" in restart[0]
    with socket.create_connection(("127.0.0.1", proc.port)) as raw:  # a debug line, now logged
        raw.sendall(b"\x16\x03\x01\x00\x08garbage!")
        raw.settimeout(5)
        while raw.recv(4096):
            pass
    wait_for(lambda: any("DEBUG" in line and "TLS handshake failed" in line for line in proc.stderr_lines))

    toml.write_text('html-cache-control = "max-age=5"\nlog-level = "debug"\n[broken\n')
    since = len(proc.stderr_lines)
    proc.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: any(" ERROR " in line for line in proc.stderr_lines[since:]))
    error = next(line for line in proc.stderr_lines[since:] if " ERROR " in line)
    assert "configuration not reloaded, keeping the old one" in error and "not valid TOML" in error
    with httpx.Client(verify=verify) as client:
        assert client.get(url).headers["cache-control"] == "max-age=5"


def test_every_worker_reloads_the_certificate(spawn_server, certs: DevCerts, second_certs: DevCerts,
                                              tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    install(certs, cert, key)
    proc = spawn_server("--cert", str(cert), "--key", str(key), "--workers", "2", "--access-log", "off")
    pids = worker_pids(proc.proc.pid)
    install(second_certs, cert, key)
    since = len(proc.stderr_lines)
    proc.proc.send_signal(signal.SIGHUP)
    for pid in pids:
        wait_for(lambda pid=pid: reloaded(proc, since, f"h2serve[{pid}]:"))
    # New connections are spread over both workers by their source ports: all get the new one.
    assert {served_serial(proc.port) for _ in range(12)} == {file_serial(second_certs.cert)}
    assert worker_pids(proc.proc.pid) == pids
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.proc.wait(20) == 0


def test_reload_covers_each_sites_own_certificate(make_server, tmp_path: Path,
                                                  two_sites) -> None:  # noqa: F811
    """[[site]] certificates (chosen by SNI) are read again too: b.test's renewed one is served."""
    server, cas = vhost_server(make_server, tmp_path, two_sites)
    renewed = throwaway_ca(tmp_path / "renewed-b", ["b.test", "www.b.test"])
    shutil.copyfile(renewed[1], cas["b"][1])
    shutil.copyfile(renewed[2], cas["b"][2])
    assert server.call(reload(server.server, None))
    status, _, body = curl_sni(server.port, "b.test", renewed[0], "h2")
    assert status == 200 and "site b" in body
    status, _, body = curl_sni(server.port, "a.test", cas["a"][0], "h2")  # a.test keeps its own
    assert status == 200 and "site a" in body


def test_reload_keeps_the_background_threads_or_stops_the_old_ones(make_server, tmp_path: Path) -> None:
    """--precompress-dir: the same settings keep the precompression and dictionary workers (one
    thread each, not one more per reload); changed ones replace them, and the old ones stop."""
    running = make_server(precompress_dir=str(tmp_path / "pre"))
    server = running.server
    first = server.services.site
    assert running.call(reload(server, None))
    assert server.services.site is not first
    assert server.services.site.precompressed is first.precompressed
    assert server.services.site.dictionaries is first.dictionaries
    changed = dataclasses.replace(server.config, precompress_dir=str(tmp_path / "other"))
    assert running.call(reload(server, lambda: changed))
    now = server.services.site
    assert now.precompressed is not first.precompressed and now.precompressed is not None
    assert first.precompressed is not None
    first.precompressed.background.run("key", lambda: None)  # an old connection asking: dropped
    assert first.precompressed.background._executor is None


def test_reloads_one_after_another_never_serve_a_stopped_worker(make_server, tmp_path: Path) -> None:
    """Two SIGHUPs close together (a renewal script, then logrotate): the second is built from what
    the first applied, so the site served keeps a running precompression worker, not one the first
    reload stopped."""
    running = make_server(precompress_dir=str(tmp_path / "pre"))
    server = running.server
    original = server.config
    changed = dataclasses.replace(original, precompress_dir=str(tmp_path / "other"))

    async def both() -> list[bool]:
        return list(await asyncio.gather(reload(server, lambda: changed), reload(server, lambda: original)))

    assert running.call(both()) == [True, True]
    now = server.services.site
    assert now.precompressed is not None and now.precompressed.folder == tmp_path / "pre"
    now.precompressed.background.run("key", lambda: None)  # a request asking: taken, not dropped
    assert now.precompressed.background._executor is not None
