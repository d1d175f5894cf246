"""HPACK for the header blocks the server sends: no dynamic table, every field's bytes cached.

Why: hpack's encoder is pure Python, and with its dynamic table each block's bytes depend on every
block sent before it on that connection, so nothing can be reused: encoding the ten fields of a
small file's response was the largest single cost of answering it. Here each field is either fully
indexed in the static table or a literal *without indexing* (RFC 7541 sections 6.1 and 6.2.2),
naming the static table's entry where it has the name. Such a field's bytes do not depend on the
connection: one process-wide cache serves every connection, and encoding a block is a dict lookup
per field. nginx encodes its responses the same way.

The price is a few dozen bytes a response (a repeated `server` or `content-type` is sent as a
literal each time, Huffman-coded); the peer's decoder table is never touched, so nothing else about
the connection changes. Dynamic table size updates that the peer's SETTINGS_HEADER_TABLE_SIZE
calls for are still sent at the start of the next block, as RFC 7541 section 4.2 requires.
"""

from __future__ import annotations

from collections.abc import Iterable

from hpack import Encoder

from .compat import encode_field, table_size_update

__all__ = ["MAX_FIELDS", "CachedEncoder", "encode_field"]

MAX_FIELDS = 8192  # distinct (name, value) pairs kept; dates, ETags and lengths come and go

_fields: dict[tuple[bytes, bytes], bytes] = {}


class CachedEncoder(Encoder):
    """An hpack `Encoder` for h2 to use (`H2Connection.encoder`) whose blocks never use the
    dynamic table. It keeps hpack's bookkeeping of table size changes, so what h2 tells it of the
    peer's SETTINGS still reaches the peer."""

    def encode(self, headers: Iterable[tuple[bytes, bytes]], huffman: bool = True) -> bytes:  # type: ignore[override]
        block = []
        update = table_size_update(self)
        if update:
            block.append(update)
        fields = _fields
        for field in headers:
            encoded = fields.get(field)
            if encoded is None:
                encoded = encode_field(field[0], field[1])
                if len(fields) >= MAX_FIELDS:
                    fields.clear()
                fields[(field[0], field[1])] = encoded
            block.append(encoded)
        return b"".join(block)
