"""parse_responses: counting pipelined HTTP/1.1 answers from the payload receiver."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubeloop.serving.payload import parse_responses

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
OK_BODY = b"HTTP/1.1 202 Accepted\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
FAIL = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy"
CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"4\r\nwiki\r\n5;ext=1\r\npedia\r\n0\r\nX-Trailer: 1\r\n\r\n"
)
CHUNKED_PLAIN = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
CLOSE = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
TO_CLOSE = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nbody until the end"

RESPONSES = [OK, OK_BODY, FAIL, CHUNKED, CHUNKED_PLAIN, NO_CONTENT, CONTINUE + OK]
IS_OK = [True, True, False, True, True, True, True]


@pytest.mark.parametrize(
    ("data", "want", "expected"),
    [
        (OK * 3, 3, (len(OK) * 3, 3, 3, True)),
        (OK * 3, 2, (len(OK) * 2, 2, 2, True)),  # never parses past what is owed
        (OK + FAIL + OK_BODY, 3, (len(OK + FAIL + OK_BODY), 3, 2, True)),
        (CHUNKED + OK, 2, (len(CHUNKED + OK), 2, 2, True)),
        (NO_CONTENT + CONTINUE + OK, 2, (len(NO_CONTENT + CONTINUE + OK), 2, 2, True)),
        (OK + CLOSE + OK, 3, (len(OK + CLOSE), 2, 2, False)),
        (OK + TO_CLOSE, 2, (len(OK) + TO_CLOSE.index(b"body"), 2, 2, False)),
        (OK + OK[:-3], 2, (len(OK), 1, 1, True)),  # the second is incomplete
        (OK_BODY[:-1], 1, (0, 0, 0, True)),
        (CHUNKED[:-2], 1, (0, 0, 0, True)),
        (b"", 4, (0, 0, 0, True)),
    ],
)
def test_counts_complete_answers(data, want, expected):
    assert parse_responses(data, 0, want) == expected
    assert parse_responses(bytearray(data), 0, want) == expected


@pytest.mark.parametrize(
    "data",
    [
        b"<html>not http</html>\r\n\r\n",
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
def test_garbage_is_an_error(data):
    with pytest.raises(ValueError):
        parse_responses(data, 0, 1)


@given(
    st.lists(st.sampled_from(range(len(RESPONSES))), min_size=1, max_size=12),
    st.lists(st.integers(min_value=1, max_value=64), max_size=40),
)
def test_any_split_of_the_stream_counts_the_same(picks, cuts):
    """Feeding the bytes in arbitrary pieces (as recv does) gives the same totals."""
    stream = b"".join(RESPONSES[i] for i in picks)
    buffer, owed, seen_total, ok_total, offset = bytearray(), len(picks), 0, 0, 0
    pieces = []
    for cut in cuts:
        pieces.append(stream[offset : offset + cut])
        offset += cut
    pieces.append(stream[offset:])
    for piece in pieces:
        buffer += piece
        pos, seen, ok, reusable = parse_responses(buffer, 0, owed)
        assert reusable
        del buffer[:pos]
        owed, seen_total, ok_total = owed - seen, seen_total + seen, ok_total + ok
    assert (seen_total, ok_total, owed, bytes(buffer)) == (
        len(picks),
        sum(IS_OK[i] for i in picks),
        0,
        b"",
    )


class _Transport:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


@given(
    st.lists(st.sampled_from(range(len(RESPONSES))), min_size=1, max_size=12),
    st.lists(st.integers(min_value=1, max_value=64), max_size=40),
    st.integers(min_value=0, max_value=12),
)
def test_connection_counts_repeated_and_mixed_answers(picks, cuts, repeat):
    """The connection's byte-comparison shortcut for repeated answers counts as parsing does."""
    from kubeloop.serving.payload import _Connection

    picks = picks + [picks[-1]] * repeat
    stream = b"".join(RESPONSES[i] for i in picks)
    conn = _Connection()
    conn.connection_made(_Transport())
    conn.owed = len(picks)
    offset = 0
    for cut in [*cuts, len(stream)]:
        conn.data_received(stream[offset : offset + cut])
        offset += cut
    assert (conn.owed, conn.ok, conn.reusable) == (0, sum(IS_OK[i] for i in picks), True)
    assert not conn.transport.closed and conn.buffer == b""


def test_connection_stops_at_a_closing_answer():
    from kubeloop.serving.payload import _Connection

    conn = _Connection()
    conn.connection_made(_Transport())
    conn.owed = 4
    conn.data_received(OK + OK + CLOSE + OK)
    assert (conn.owed, conn.ok, conn.reusable, conn.transport.closed) == (1, 3, False, True)
