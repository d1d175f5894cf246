"""Header blocks the server sends: decodable by any client, never touching its dynamic table, the
same bytes for the same fields on every connection, and table size updates still signalled."""

from __future__ import annotations

from h2.settings import SettingCodes
from h2client import H2Client
from hpack import Decoder
from hyperframe.frame import HeadersFrame, PushPromiseFrame

from h2serve.proto.hpackcache import CachedEncoder, encode_field

RESPONSE = [
    (b":status", b"200"),                 # fully in the static table
    (b"content-type", b"text/css; charset=utf-8"),  # static name, literal value
    (b"etag", b'"1a2b-17f00000000"'),
    (b"server", b"h2serve"),
    (b"x-unusual", b"value"),             # name not in the static table
    (b":status", b"404"),
    (b"accept-encoding", b"gzip, deflate"),  # static name and value
]


def test_blocks_decode_and_leave_the_dynamic_table_empty() -> None:
    encoder, decoder = CachedEncoder(), Decoder()
    for _ in range(3):
        assert decoder.decode(encoder.encode(RESPONSE), raw=True) == RESPONSE
    assert len(decoder.header_table.dynamic_entries) == 0


def test_a_field_has_the_same_bytes_whatever_came_before() -> None:
    first = CachedEncoder().encode(RESPONSE)
    other = CachedEncoder()
    other.encode([(b"server", b"h2serve"), (b"x-other", b"1")] * 5)
    assert other.encode(RESPONSE) == first
    assert encode_field(b":status", b"200") == b"\x88"  # static table index 8
    assert encode_field(b"x-unusual", b"value")[0] == 0x00  # literal without indexing, new name
    assert encode_field(b"etag", b'"x"')[0] == 0x0F  # without indexing, static name 34 (4-bit prefix)


def test_a_table_size_change_is_signalled_once_at_the_start_of_the_next_block() -> None:
    encoder, decoder = CachedEncoder(), Decoder()
    encoder.header_table_size = 0
    block = encoder.encode(RESPONSE)
    assert block[0] == 0x20  # dynamic table size update to 0
    assert decoder.decode(block, raw=True) == RESPONSE
    assert decoder.header_table.maxsize == 0
    assert encoder.encode(RESPONSE)[0] != 0x20


def _header_blocks(client: H2Client, stream_id: int) -> list[bytes]:
    return [w.frame.data for w in client.frames
            if isinstance(w.frame, HeadersFrame) and w.stream_id == stream_id]


def test_real_responses_on_two_connections_carry_identical_blocks(server, ca_file: str) -> None:
    """The same file asked twice on each of two connections: every answer's header block is the
    same bytes (no dynamic table state), and the client's table stays empty."""
    blocks = []
    for _ in range(2):
        with H2Client.tls(server.port, ca_file) as client:
            for _ in range(2):
                sid = client.request("/static/css/site.css")
                client.receive_until(lambda sid=sid: client.responses[sid].done)
                assert client.responses[sid].status == 200
                assert client.responses[sid].header(b"content-type") == b"text/css; charset=utf-8"
                blocks += _header_blocks(client, sid)
            assert len(client.conn.decoder.header_table.dynamic_entries) == 0
    # Only the Date may differ between them (a second may pass).
    without_date = {b.replace(encode_field(b"date", _date(b)), b"") for b in blocks}
    assert len(blocks) == 4 and len(without_date) == 1


def _date(block: bytes) -> bytes:
    return dict(Decoder().decode(block, raw=True))[b"date"]


def test_client_table_size_zero_gets_the_update_first(server, ca_file: str) -> None:
    with H2Client.tls(server.port, ca_file, settings={SettingCodes.HEADER_TABLE_SIZE: 0}) as client:
        sids = [client.request(p) for p in ("/", "/static/css/site.css", "/missing")]
        client.receive_until(lambda: all(client.responses[s].done for s in sids))
        assert [client.responses[s].status for s in sids] == [200, 200, 404]
        blocks = [w.frame.data for w in client.frames
                  if isinstance(w.frame, HeadersFrame | PushPromiseFrame)]
        assert len(blocks) > 3  # the page's pushes' promises come first: blocks of their own
        assert blocks[0][0] == 0x20  # size update to 0 before any field of the first block
        assert all(b[0] != 0x20 for b in blocks[1:])  # and only there
