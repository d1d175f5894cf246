"""Starting and stopping the servers compared: h2serve, Hypercorn (with Quart, or a bare ASGI static
app) and nginx, each a subprocess pinned to one core, on a port of its own, with the same certificate.

    server = start_h2serve(site.h2serve_args(), certs, cpu=0)
    ...https://localhost:{server.port}/...
    server.peak_rss_kib()   # VmHWM of the server's processes, read before stopping
    server.stop()
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Certs:
    """The dev CA and the leaf every server presents."""

    ca: Path
    cert: Path
    key: Path


def make_certs(directory: Path) -> Certs:
    """A development CA and localhost certificate, made by `python -m h2serve cert`."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "h2serve", "cert", "--certs-dir", str(directory)],
                   check=True, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL)
    return Certs(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")


def _env(**extra: str) -> dict[str, str]:
    """The environment for servers: this checkout's h2serve and benchmarks first on the path."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")]))
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(cmd: list[str], cpu: int | None) -> list[str]:
    """`cmd` under `taskset -c CPU` when pinning is asked for and possible."""
    if cpu is None or shutil.which("taskset") is None or (os.cpu_count() or 1) <= cpu:
        return cmd
    return ["taskset", "-c", str(cpu), *cmd]


@dataclass
class ServerProcess:
    """A server running in a subprocess (and, for nginx, its worker)."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def pids(self) -> list[int]:
        """The server's process and all its descendants."""
        out, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            with contextlib.suppress(OSError):
                for task in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{task}/children") as f:
                        todo.extend(int(x) for x in f.read().split())
        return out

    def peak_rss_kib(self) -> int:
        """Peak resident memory (VmHWM) summed over the server's processes, in KiB."""
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
        return total

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)


def cpu_ticks(pids: list[int]) -> int:
    """utime + stime of these processes (all their threads) so far, in clock ticks
    (/proc/PID/stat); a process that has gone counts nothing."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat
        except (OSError, IndexError, ValueError):
            pass
    return total


def _start(name: str, cmd: list[str], port: int, log: Path, env: dict[str, str] | None = None,
           cwd: Path = REPO, timeout: float = 30.0) -> ServerProcess:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env or _env(), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    server = ServerProcess(name, proc, port, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return server
        except OSError:
            time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"{name} did not listen on port {port} within {timeout:g}s")


def start_h2serve(site_args: list[str], certs: Certs, workdir: Path, *, cpu: int | None = 0,
                  extra: list[str] | None = None) -> ServerProcess:
    """`python -m h2serve` with `site_args` (`--root DIR` or `--templates/--static`), no access log."""
    port = free_port()
    cmd = [sys.executable, "-m", "h2serve", "--bind", f"127.0.0.1:{port}", "--cert", str(certs.cert),
           "--key", str(certs.key), "--access-log", "off", *site_args, *(extra or [])]
    return _start("h2serve", pinned(cmd, cpu), port, workdir / f"h2serve-{port}.log")


def hypercorn_available() -> bool:
    try:
        import hypercorn  # noqa: F401
    except ImportError:
        return False
    return True


def quart_available() -> bool:
    try:
        import quart  # noqa: F401
    except ImportError:
        return False
    return hypercorn_available()


def start_hypercorn(app: str, certs: Certs, workdir: Path, env: dict[str, str], *,
                    cpu: int | None = 0) -> ServerProcess:
    """Hypercorn serving `app` (module:attribute) in one process (`--workers 0`: no worker
    subprocess), TLS with the same certificate, h2 and http/1.1 by ALPN."""
    port = free_port()
    # Hypercorn closes a connection after 1000 requests by default (nginx's keepalive_requests is set
    # high too, and h2serve has no such cap): h2load does not reconnect, so lift it.
    config = workdir / f"hypercorn-{port}.toml"
    config.write_text("keep_alive_max_requests = 1000000\n")
    cmd = [sys.executable, "-m", "hypercorn", "--config", str(config), "--bind", f"127.0.0.1:{port}",
           "--certfile", str(certs.cert), "--keyfile", str(certs.key), "--workers", "0",
           "--log-level", "warning", app]
    name = app.split(":")[0].rsplit(".", 1)[-1]
    return _start(f"hypercorn-{name}", pinned(cmd, cpu), port,
                  workdir / f"hypercorn-{port}.log", env=_env(**env))


def start_hypercorn_quart(pages: Path, static: Path, pushes: list[str], certs: Certs, workdir: Path,
                          *, cpu: int | None = 0) -> ServerProcess:
    """Hypercorn + the Quart app of `quart_push.py`, pushing `pushes` with the index page."""
    env = {"BENCH_PAGES": str(pages), "BENCH_STATIC": str(static), "BENCH_PUSHES": json.dumps(pushes)}
    return start_hypercorn("benchmarks.quart_push:app", certs, workdir, env, cpu=cpu)


def start_hypercorn_static(root: Path, certs: Certs, workdir: Path, *, cpu: int | None = 0
                           ) -> ServerProcess:
    """Hypercorn + the minimal ASGI static app of `asgi_static.py`, serving `root`."""
    return start_hypercorn("benchmarks.asgi_static:app", certs, workdir, {"BENCH_ROOT": str(root)},
                           cpu=cpu)


def nginx_binary() -> str | None:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def nginx_version() -> str:
    binary = nginx_binary()
    if binary is None:
        return ""
    out = subprocess.run([binary, "-v"], capture_output=True, text=True)
    return (out.stderr or out.stdout).strip().split("/")[-1]


def start_nginx(pages: Path, static: Path, certs: Certs, workdir: Path, *,
                pushes: list[str] | None = None, cpu: int | None = 0,
                workers: int = 1) -> ServerProcess:
    """nginx, one worker (or `workers`), TLS 1.2/1.3 with the same certificate, `http2` on; pages
    at / (the index page with `http2_push` of each of `pushes`), `static` at /static/; no access
    log."""
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx is not installed")
    port = free_port()
    prefix = workdir / f"nginx-{port}"
    prefix.mkdir(parents=True, exist_ok=True)
    push_lines = "".join(f"            http2_push {p};\n" for p in (pushes or []))
    temp = "".join(f"    {kind}_temp_path {prefix / kind};\n"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    mime = "/etc/nginx/mime.types"
    # Workers run as `nobody` unless told otherwise, and could not read a private temporary folder.
    user = "user root root;\n" if os.geteuid() == 0 else ""
    conf = f"""daemon off;
{user}master_process on;
worker_processes {workers};
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} warn;
events {{ worker_connections 4096; }}
http {{
    {f"include {mime};" if os.path.exists(mime) else ""}
    default_type application/octet-stream;
    access_log off;
{temp}    sendfile on;
    tcp_nodelay on;
    keepalive_requests 1000000;
    http2_max_concurrent_pushes 100;
    server {{
        listen 127.0.0.1:{port} ssl http2;
        server_name localhost;
        ssl_certificate {certs.cert};
        ssl_certificate_key {certs.key};
        ssl_protocols TLSv1.2 TLSv1.3;
        root {pages};
        location = / {{
            try_files /index.html =404;
{push_lines}        }}
        location /static/ {{
            alias {static}/;
        }}
    }}
}}
"""
    conf_file = prefix / "nginx.conf"
    conf_file.write_text(conf)
    cmd = [binary, "-p", str(prefix), "-c", str(conf_file), "-e", str(prefix / "error.log")]
    name = "nginx" if workers == 1 else f"nginx-{workers}"
    return _start(name, pinned(cmd, cpu), port, prefix / "stdout.log")
