"""Compression dictionaries (RFC 9842): the previous version of a file as the dictionary for the next.

A `[[dictionary]]` rule names files by a URL pattern (`match = "/static/app.*.js"`). Answers for
them carry `Use-As-Dictionary: match="/static/app.*.js"`, and the browser keeps the file as a
dictionary for later URLs matching the pattern. After a deploy, its request for `app.<new>.js`
carries `Available-Dictionary: :<base64 SHA-256 of the old file>:` and names `dcz` in
Accept-Encoding; when the server holds a file with that hash, it answers `Content-Encoding: dcz`:
the new file as a zstd frame compressed against the old one (site/zstdcodec.py), typically a few
percent of its brotli size. `dcb` (brotli with a dictionary) is not offered: the `brotli` binding
(1.2.1) cannot compress with a custom dictionary.

Which dictionaries the server holds, keyed by SHA-256:
- every version of a matching file it has served: hashed in a background thread after the first
  answer, and its bytes kept in `--precompress-dir` (a bounded folder per site), so a file
  deleted by a deploy still serves as a dictionary, across restarts too;
- matching files still on disk (an older bundle left beside the new one), found by looking through
  the folders the pattern can name, at most once every `RESCAN` seconds, when a request names a
  hash not known (so a client making up hashes costs one folder walk every few seconds at most).
A dictionary's bytes are checked against their hash each time they are read.

The delta for (file version, dictionary) is made once, in a worker thread, on the first request
that needs it: at zstd level 19 a delta of a 400 KiB script takes about 70 ms, little enough to
make that request wait for it (as on-the-fly compression does) rather than answer it with brotli
and the next one with the delta; a returning visitor may not come back. Deltas are kept in the
in-memory compression cache and, with --precompress-dir, on disk.

An `Available-Dictionary` that is not a structured-field byte sequence of 32 bytes, or names no
dictionary held for this pattern, gets the ordinary coding, never an error.

Patterns: RFC 9842 uses URLPattern; this implements its path subset: a pattern starting with `/`
(resolved against the request's own origin, so same-origin by construction) whose only special
character is `*`, any run of characters, slashes included. The query is not compared.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import http_sf

from . import coding, zstdcodec
from .blocking import WouldBlock
from .precompress import Background, DiskCache, version_name

if TYPE_CHECKING:
    from .filecache import FileEntry
    from .rulespec import DictionaryRule

RESCAN = 2.0                     # seconds between walks of the folders for unknown hashes
MAX_SCAN = 4096                  # files looked at in one walk
MAX_DICTIONARY = coding.MAX_SIZE  # the largest file kept or used as a dictionary
MAX_KNOWN = 4096                 # hashes remembered


@dataclass(frozen=True, slots=True)
class Pattern:
    """One `[[dictionary]]` rule, compiled: the regex of its `match`, and the Use-As-Dictionary
    value its answers carry."""

    number: int
    match: str
    regex: re.Pattern[str]
    dest: frozenset[bytes]
    header: bytes

    @classmethod
    def compile(cls, number: int, rule: DictionaryRule) -> Pattern:
        regex = re.compile(".*".join(re.escape(part) for part in rule.match.split("*")) + r"\Z",
                           re.DOTALL)
        params: http_sf.DictionaryType = {"match": rule.match}
        if rule.match_dest:
            params["match-dest"] = [(d, {}) for d in rule.match_dest]
        if rule.id is not None:
            params["id"] = rule.id
        return cls(number, rule.match, regex, frozenset(d.encode() for d in rule.match_dest),
                   http_sf.ser(params).encode())


def parse_available(value: bytes | None) -> bytes | None:
    """The SHA-256 an Available-Dictionary value names, or None if it is not one."""
    if value is None:
        return None
    try:
        item = http_sf.parse(value, tltype="item")
    except (http_sf.StructuredFieldError, ValueError, IndexError, UnicodeDecodeError):
        return None
    found = item[0] if isinstance(item, tuple) else None
    if not isinstance(found, bytes) or len(found) != 32:
        return None
    return found


@dataclass(slots=True)
class _Held:
    """Where a dictionary's bytes are: a file in the store, or a file of the site."""

    pattern: int
    stored: str | None = None   # name in the store folder
    path: str | None = None     # a site file, as long as it has this size and time
    size: int = 0
    mtime_ns: int = 0


class Dictionaries:
    """The dictionaries of one site and the deltas against them.

    `mounts` are (URL prefix segments, folder) pairs, to find matching files on disk; `folder`
    (--precompress-dir) keeps served versions and deltas, each part bounded by `limit` bytes."""

    def __init__(self, rules: Sequence[DictionaryRule], mounts: Sequence[tuple[tuple[str, ...], Path]],
                 folder: Path | None, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.patterns = [Pattern.compile(n, r) for n, r in enumerate(rules, 1)]
        self.mounts = list(mounts)
        self.clock = clock
        site_id = hashlib.sha256("\0".join(str(r) for _, r in mounts).encode()).hexdigest()[:16]
        self.store = DiskCache(folder / "dictionaries" / site_id, limit) if folder else None
        self.deltas = DiskCache(folder / "deltas", limit) if folder else None
        self._held: OrderedDict[bytes, _Held] = OrderedDict()
        self._versions: OrderedDict[tuple[str, str], bytes] = OrderedDict()  # (path, etag) -> hash
        self._files: dict[str, tuple[int, int, bytes]] = {}  # path -> (size, mtime_ns, hash)
        self._lock = threading.Lock()
        self._scanned = -RESCAN
        self.background = Background("h2serve-dictionary")
        if self.store is not None:
            for name in self.store.names():
                pattern, _, digest = name.partition("-")
                if pattern.isdigit() and len(digest) == 64:
                    self._hold(bytes.fromhex(digest), _Held(int(pattern), stored=name))

    def pattern_for(self, path: str) -> Pattern | None:
        """The first rule whose pattern matches a request path (query excluded)."""
        for pattern in self.patterns:
            if pattern.regex.match(path):
                return pattern
        return None

    # -- offering a delta ------------------------------------------------------------------------

    def offer(self, pattern: Pattern, request: dict[bytes, bytes], *, block: bool) -> bytes | None:
        """The hash of a dictionary held for `pattern` that the request says the client has, or
        None. An unknown hash may make it look through the folders (WouldBlock("io") with
        `block=False`)."""
        if not zstdcodec.available():
            return None
        wanted = parse_available(request.get(b"available-dictionary"))
        if wanted is None or coding.accepted(request.get(b"accept-encoding")).get("dcz", 0.0) <= 0:
            return None
        dest = request.get(b"sec-fetch-dest")
        if pattern.dest and dest is not None and dest not in pattern.dest:
            return None
        held = self._held.get(wanted)
        if held is None and self.clock() - self._scanned >= RESCAN:
            if not block:
                raise WouldBlock("io")
            self.scan()
            held = self._held.get(wanted)
        return wanted if held is not None and held.pattern == pattern.number else None

    def etag(self, etag: str, digest: bytes) -> str:
        return f'{etag[:-1]}-dcz-{digest[:8].hex()}"'

    def delta(self, path: str, etag: str, digest: bytes) -> Callable[[bytes], bytes | None]:
        """An `encode` for CompressionCache.get: the delta of the file's contents against the
        dictionary `digest`, read from the deltas folder when made before."""
        def encode(data: bytes) -> bytes | None:
            name = version_name(path, etag, "dcz-" + digest.hex()) + ".dcz"
            if self.deltas is not None and self.deltas.has(name):
                made = self.deltas.read(name)
                if made is not None:
                    return made
            dictionary = self.load(digest)
            if dictionary is None:
                return None
            made = zstdcodec.compress_dcz(data, dictionary)
            if self.deltas is not None:
                self.deltas.put(name, made)
            return made
        return encode

    def load(self, digest: bytes) -> bytes | None:
        """A held dictionary's bytes, checked against its hash (blocking)."""
        held = self._held.get(digest)
        if held is None:
            return None
        data = None
        if held.stored is not None and self.store is not None:
            data = self.store.read(held.stored)
        elif held.path is not None:
            try:
                st = os.stat(held.path)
                if (st.st_size, st.st_mtime_ns) == (held.size, held.mtime_ns):
                    with open(held.path, "rb") as f:
                        data = f.read(MAX_DICTIONARY + 1)
            except OSError:
                data = None
        if data is None or hashlib.sha256(data).digest() != digest:
            with self._lock:
                self._held.pop(digest, None)
            return None
        return data

    # -- keeping dictionaries ----------------------------------------------------------------------

    def served(self, pattern: Pattern, entry: FileEntry, read: Callable[[], bytes | None]) -> None:
        """A version of a matching file was answered: keep it as a dictionary (hashed and stored in
        a background thread, once per version)."""
        key = (entry.path, entry.etag)
        if key not in self._versions and entry.size <= MAX_DICTIONARY:
            self.background.run(key, lambda: self._keep(pattern, entry, read))

    def wait(self, timeout: float = 10.0) -> None:
        self.background.wait(timeout)

    def shutdown(self) -> None:
        self.background.shutdown()

    def _keep(self, pattern: Pattern, entry: FileEntry, read: Callable[[], bytes | None]) -> None:
        data = read()
        if data is None:
            return
        digest = hashlib.sha256(data).digest()
        held = _Held(pattern.number, path=entry.path, size=entry.size, mtime_ns=entry.mtime_ns)
        if self.store is not None:
            name = f"{pattern.number}-{digest.hex()}"
            if self.store.has(name) or self.store.put(name, data):
                held = _Held(pattern.number, stored=name)
        with self._lock:
            self._versions[(entry.path, entry.etag)] = digest
            while len(self._versions) > MAX_KNOWN:
                self._versions.popitem(last=False)
        self._hold(digest, held)

    def _hold(self, digest: bytes, held: _Held) -> None:
        with self._lock:
            old = self._held.get(digest)
            if old is not None and old.stored is not None and held.stored is None:
                return  # the stored copy outlives the file
            self._held[digest] = held
            self._held.move_to_end(digest)
            while len(self._held) > MAX_KNOWN:
                self._held.popitem(last=False)

    def scan(self) -> None:
        """Look through the folders the patterns can name for matching files, and hold each by its
        hash (a file's hash is computed again only when its size or time changed). Blocking."""
        self._scanned = self.clock()
        seen = 0
        for prefix, root in self.mounts:
            url = "/" + "".join(p + "/" for p in prefix)
            for folder, dirs, files in os.walk(root):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                rel = os.path.relpath(folder, root)
                base = url if rel == "." else url + rel.replace(os.sep, "/") + "/"
                if not any(_may_hold(p, base) for p in self.patterns):
                    dirs[:] = []
                    continue
                for name in sorted(files):
                    seen += 1
                    if seen > MAX_SCAN:
                        return
                    pattern = self.pattern_for(base + name)
                    if pattern is not None:
                        self._hash_file(pattern, os.path.join(folder, name), root)

    def _hash_file(self, pattern: Pattern, path: str, root: Path) -> None:
        try:
            real = os.path.realpath(path)
            if not real.startswith(str(root) + os.sep):
                return  # a link out of the site is no dictionary of it
            st = os.stat(real)
            if st.st_size > MAX_DICTIONARY or not os.path.isfile(real):
                return
            known = self._files.get(path)
            if known is not None and known[:2] == (st.st_size, st.st_mtime_ns):
                digest = known[2]
            else:
                with open(real, "rb") as f:
                    digest = hashlib.sha256(f.read(MAX_DICTIONARY + 1)).digest()
                self._files[path] = (st.st_size, st.st_mtime_ns, digest)
        except OSError:
            return
        self._hold(digest, _Held(pattern.number, path=real, size=st.st_size, mtime_ns=st.st_mtime_ns))


def _may_hold(pattern: Pattern, folder_url: str) -> bool:
    """Whether files below `folder_url` (ending in /) may match `pattern`: the pattern's text
    before its first `*` and `folder_url` agree as far as both go."""
    literal = pattern.match.split("*", 1)[0]
    n = min(len(literal), len(folder_url))
    return literal[:n] == folder_url[:n]
