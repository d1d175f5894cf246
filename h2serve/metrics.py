"""Prometheus metrics (`--metrics-bind`): what the server counts, and the text a scrape gets.

The names are an interface (dashboards and alerts depend on them), so they are listed once, here:

    h2serve_requests_total{protocol="h2"|"http/1.1", status_class="2xx"...}   responses finished
    h2serve_response_bytes_total                 body bytes sent (pushed responses included)
    h2serve_request_duration_seconds             histogram: request received to response finished
    h2serve_open_connections{protocol}           connections open now (h2, http/1.1)
    h2serve_h2_streams_total                     HTTP/2 streams opened by clients
    h2serve_pushes_total                         PUSH_PROMISEs sent
    h2serve_pushes_refused_total                 promised streams the client reset (RST_STREAM)
    h2serve_early_hints_total                    103 Early Hints sent
    h2serve_abuse_disconnects_total{reason}      clients cut off: each flood budget, Rapid Reset,
                                                 header size, the timeouts (ABUSE_REASONS)
    h2serve_tls_handshake_failures_total         TLS handshakes that failed or timed out
    h2serve_file_cache_hits_total / _misses_total    file lookups answered from memory / the disk
    h2serve_compressions_total                   responses compressed on the fly (then cached)
    h2serve_config_reloads_total{result}         SIGHUP reloads: ok, failed

Why it is built this way:

* **prometheus_client** makes the objects and the exposition text (the ecosystem's library; an
  optional extra, `h2serve[metrics]`, imported only when `--metrics-bind` is given). Without it the
  engines call `Meter`, whose methods do nothing.
* **Per request, a few lock-protected additions** on children bound in advance (no label lookup):
  about 1.5 us a request in one process, 4 us with workers (whose values live in mmapped files);
  the commit adding this measured the serving rate with and without (benchmarks/README.md).
  The file cache and the compression cache, which also run in worker threads, count in plain
  integers of their own, carried into the counters by `sample()` once a second and before a scrape.
* **With `--workers N`** every worker writes its values to files in the directory the supervisor
  made for the run (prometheus_client's multiprocess mode, `PROMETHEUS_MULTIPROC_DIR`, which must be
  set before prometheus_client is first imported: workers.py sets it before forking), and a scrape,
  whichever worker takes it, adds up every file. A worker that dies leaves its counter files there,
  so totals never go back; the supervisor calls `mark_process_dead`, which removes only its "live"
  gauge files, so the open connections of a dead worker stop counting.
* **A scrape never blocks the serving loop**: `exposition()` (which reads every worker's files) runs
  in a worker thread (net/opslistener.py).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import TYPE_CHECKING, Any

from .config import ConfigError

if TYPE_CHECKING:
    from .site.coding import CompressionCache
    from .site.filecache import FileCache

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# What generate_latest writes: the classic text format, which every Prometheus reads (0.26 calls it
# CONTENT_TYPE_PLAIN_0_0_4, older releases CONTENT_TYPE_LATEST, now the name of 1.0.0).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PROTOCOLS = ("h2", "http/1.1")
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
# h2serve_abuse_disconnects_total's `reason` label: every value is exported from the start (at 0),
# so that a rate() over it works before the first attack.
ABUSE_REASONS = (
    "rapid_reset", "rst_stream_flood", "settings_flood", "ping_flood", "window_update_flood",
    "priority_flood", "priority_update_flood", "empty_data_flood", "other_frame_flood",
    "stream_flood", "header_size", "continuation_flood", "header_timeout", "handshake_timeout",
    "send_timeout", "unread_output",
)
# Buckets of h2serve_request_duration_seconds: a static file from memory takes well under a
# millisecond; a large download takes as long as the client's bandwidth.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    5.0, 10.0, 30.0, 60.0)


class Meter:
    """What the server counts, with metrics off: every method does nothing (and costs a call)."""

    enabled = False

    def request(self, h2: bool, status: int, size: int, seconds: float) -> None:
        """A response finished (or was cut off): `size` body bytes sent in `seconds`."""

    def opened(self, h2: bool) -> None:
        """A connection began speaking HTTP/2 (`h2`) or HTTP/1.1."""

    def closed(self, h2: bool) -> None:
        """A connection `opened` has ended."""

    def stream(self) -> None:
        """A client opened an HTTP/2 stream."""

    def push(self) -> None:
        """A PUSH_PROMISE went out."""

    def push_refused(self) -> None:
        """The client reset a promised stream."""

    def early_hint(self) -> None:
        """A 103 Early Hints went out."""

    def abuse(self, reason: str) -> None:
        """A client was cut off for `reason`, one of ABUSE_REASONS."""

    def tls_failure(self) -> None:
        """A TLS handshake failed or timed out."""

    def reloaded(self, ok: bool) -> None:
        """A SIGHUP reload succeeded, or failed and kept the old settings."""

    def sample(self, cache: FileCache, compressed: CompressionCache) -> None:
        """Carry the caches' own counts into the metrics."""


def flood_reason(text: str) -> str:
    """The `reason` label for a refusal of the HTTP/2 frame guard, from its log line."""
    if "Rapid Reset" in text:
        return "rapid_reset"
    if text.startswith("header block over"):
        return "header_size"
    if "CONTINUATION" in text:
        return "continuation_flood"
    if text.endswith(" flood"):
        name = text[:-len(" flood")].lower().replace(" ", "_")
        label = name + "_flood"
        return label if label in ABUSE_REASONS else "other_frame_flood"
    return "other_frame_flood"


class PrometheusMeter(Meter):
    """The counts in prometheus_client's objects, in a registry of this server's own (so that two
    servers in one process, as in the tests, never share a count)."""

    enabled = True

    def __init__(self) -> None:
        try:
            import prometheus_client as pc
        except ImportError:
            raise ConfigError("--metrics-bind: prometheus_client is not installed "
                              "(pip install 'h2serve[metrics]')") from None
        self.registry = registry = pc.CollectorRegistry(auto_describe=True)
        self.multiprocess_dir = os.environ.get(MULTIPROC_ENV)

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Any:
            return pc.Counter(name, doc, labels, registry=registry)

        requests = counter("h2serve_requests", "Responses finished, by protocol and status class",
                           ("protocol", "status_class"))
        # [h2][status // 100 - 1]: the child for a response, found without a label lookup (and
        # made now: every label pair is exported at 0 from the start).
        self._requests = {h2: [requests.labels(proto, cls) for cls in STATUS_CLASSES]
                          for h2, proto in zip((True, False), PROTOCOLS, strict=True)}
        self._bytes = counter("h2serve_response_bytes", "Response body bytes sent")
        self._duration = pc.Histogram(
            "h2serve_request_duration_seconds", "Seconds from a request to the end of its response",
            registry=registry, buckets=DURATION_BUCKETS)
        gauge = pc.Gauge("h2serve_open_connections", "Connections open now, by protocol",
                         ("protocol",), registry=registry, multiprocess_mode="livesum")
        self._open = {h2: gauge.labels(proto) for h2, proto in zip((True, False), PROTOCOLS, strict=True)}
        self._streams = counter("h2serve_h2_streams", "HTTP/2 streams opened by clients")
        self._pushes = counter("h2serve_pushes", "Server pushes promised (PUSH_PROMISE)")
        self._refused = counter("h2serve_pushes_refused", "Promised streams the client reset")
        self._hints = counter("h2serve_early_hints", "103 Early Hints responses sent")
        abuse = counter("h2serve_abuse_disconnects", "Clients cut off for abuse, by reason", ("reason",))
        self._abuse = {reason: abuse.labels(reason) for reason in ABUSE_REASONS}
        self._tls = counter("h2serve_tls_handshake_failures", "TLS handshakes failed or timed out")
        self._hits = counter("h2serve_file_cache_hits", "File lookups answered from memory")
        self._misses = counter("h2serve_file_cache_misses", "File lookups that looked at the disk")
        self._compressions = counter("h2serve_compressions", "Responses compressed on the fly")
        reloads = counter("h2serve_config_reloads", "SIGHUP reloads, by result", ("result",))
        self._reloads = {True: reloads.labels("ok"), False: reloads.labels("failed")}
        self._seen = (0, 0, 0)  # the caches' counts already carried over: hits, misses, compressions

    # -- what the engines call (the hot path: a few additions each) --------------------------------

    def request(self, h2: bool, status: int, size: int, seconds: float) -> None:
        if 100 <= status < 600:  # 0: cut off before any answer (timed out, reset): a duration only
            self._requests[h2][status // 100 - 1].inc()
        if size:
            self._bytes.inc(size)
        self._duration.observe(seconds)

    def opened(self, h2: bool) -> None:
        self._open[h2].inc()

    def closed(self, h2: bool) -> None:
        self._open[h2].dec()

    def stream(self) -> None:
        self._streams.inc()

    def push(self) -> None:
        self._pushes.inc()

    def push_refused(self) -> None:
        self._refused.inc()

    def early_hint(self) -> None:
        self._hints.inc()

    def abuse(self, reason: str) -> None:
        self._abuse[reason].inc()

    def tls_failure(self) -> None:
        self._tls.inc()

    def reloaded(self, ok: bool) -> None:
        self._reloads[ok].inc()

    def sample(self, cache: FileCache, compressed: CompressionCache) -> None:
        now = (cache.hits, cache.misses, compressed.compressions)
        for counter, value, seen in zip((self._hits, self._misses, self._compressions), now, self._seen,
                                        strict=True):
            if value > seen:
                counter.inc(value - seen)
        self._seen = now

    # -- a scrape --------------------------------------------------------------------------------

    def exposition(self) -> tuple[bytes, str]:
        """The text a scrape gets, and its content type. Blocking (with workers it reads every
        worker's files): called in a worker thread."""
        import prometheus_client as pc

        registry = self.registry
        if self.multiprocess_dir is not None:
            from prometheus_client import multiprocess

            registry = pc.CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, self.multiprocess_dir)
        return pc.generate_latest(registry), CONTENT_TYPE


def make_meter(enabled: bool) -> Meter:
    return PrometheusMeter() if enabled else Meter()


# -- the supervisor's side of multiprocess mode (workers.py) ----------------------------------------

def start_multiprocess() -> str:
    """A fresh directory for the workers' metric files, named in the environment before any of them
    (or this process) imports prometheus_client; `end_multiprocess` removes it."""
    path = tempfile.mkdtemp(prefix="h2serve-metrics-")
    os.environ[MULTIPROC_ENV] = path
    return path


def worker_died(path: str, pid: int) -> None:
    """A worker is gone: its "live" gauges (open connections) stop counting; its counters stay."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, path)


def end_multiprocess(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
    if os.environ.get(MULTIPROC_ENV) == path:
        del os.environ[MULTIPROC_ENV]
