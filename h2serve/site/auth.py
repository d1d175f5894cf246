"""HTTP Basic authentication (RFC 7617) against the bcrypt entries of an htpasswd file.

bcrypt is slow on purpose (a cost-5 check, `htpasswd -B`'s default, takes about 2 ms; cost 12 a
quarter of a second), so a check never runs on the event loop: `check(block=False)` answers only
what it knows without hashing and raises WouldBlock("cpu") otherwise, and the request is asked
again in a worker thread. Credentials that passed are remembered (by a keyed hash of the header,
never the password itself) in a small bounded map, as Caddy does, so a browser sending the same
header with every request costs one bcrypt check, not one per request.

A failed check takes the time of a bcrypt check whether the user exists or not: an unknown user is
checked against a dummy hash of the file's highest cost, so the answer's timing does not tell an
attacker which user names exist.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import threading
from collections import OrderedDict

from .blocking import WouldBlock
from .rulespec import AuthRule

REMEMBERED = 1024  # credentials that passed, kept to skip bcrypt on the next request
BCRYPT_MAX = 72    # bcrypt uses the first 72 bytes of a password; Apache's htpasswd -B too
_COST = re.compile(rb"\$2[aby]\$([0-9]{2})\$")


class Guard:
    """One `[[auth]]` rule: its realm, its users, and the check of an Authorization header."""

    def __init__(self, rule: AuthRule) -> None:
        import bcrypt  # the `auth` extra: only servers with [[auth]] load it

        self._bcrypt = bcrypt
        self.rule = rule
        self.users = dict(rule.users)
        self.challenge = f'Basic realm="{rule.realm}"'.encode()
        cost = max(int(m.group(1)) for h in self.users.values() if (m := _COST.match(h)))
        self._dummy = bcrypt.hashpw(os.urandom(16), bcrypt.gensalt(rounds=max(4, cost)))
        self._key = os.urandom(32)
        self._passed: OrderedDict[bytes, str] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, authorization: bytes | None, *, block: bool) -> tuple[bool, str | None]:
        """(whether the credentials pass, the user name they give or None).

        With `block=False`, WouldBlock("cpu") when a bcrypt check is needed."""
        if authorization is None:
            return False, None
        key = hmac.new(self._key, authorization, hashlib.sha256).digest()
        with self._lock:
            user = self._passed.get(key)
            if user is not None:
                self._passed.move_to_end(key)
                return True, user
        credentials = basic_credentials(authorization)
        if credentials is None:
            return False, None
        user, password = credentials
        if not block:
            raise WouldBlock("cpu")
        hashed = self.users.get(user)
        ok = self._bcrypt.checkpw(password[:BCRYPT_MAX], hashed or self._dummy) and hashed is not None
        if ok:
            with self._lock:
                self._passed[key] = user
                while len(self._passed) > REMEMBERED:
                    self._passed.popitem(last=False)
        return ok, user


def basic_credentials(authorization: bytes) -> tuple[str, bytes] | None:
    """(user, password) of a `Basic` Authorization value, or None if it is not one. The user name
    is UTF-8 (RFC 7617's charset); the password stays bytes, as bcrypt takes it."""
    scheme, _, token = authorization.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return None
