"""Counting pipelined HTTP/1.1 answers from the payload receiver (ResponseCounter, httptools)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubeloop.serving.payload import ResponseCounter, _Connection

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


def count(data: bytes, eof: bool = False) -> tuple[int, int, bool]:
    """(final answers, 2xx among them, connection ends) after ``data`` and maybe EOF."""
    counter = ResponseCounter()
    counter.feed(data)
    if eof:
        counter.eof()
    return counter.answers, counter.ok, counter.closing


@pytest.mark.parametrize(
    ("data", "expected", "at_eof"),
    [
        (OK * 3, (3, 3, False), (3, 3, True)),
        (OK + FAIL + OK_BODY, (3, 2, False), (3, 2, True)),
        (CHUNKED + OK, (2, 2, False), (2, 2, True)),
        (NO_CONTENT + CONTINUE + OK, (2, 2, False), (2, 2, True)),  # 1xx is not an answer
        (OK + CLOSE + OK, (2, 2, True), (2, 2, True)),  # nothing counts after a close
        (OK + TO_CLOSE, (1, 1, False), (2, 2, True)),  # the body runs to the close
        (CLOSE[:-1], (0, 0, False), (1, 1, True)),  # it said it ends the connection
        (OK + OK[:-3], (1, 1, False), (1, 1, True)),  # the second is incomplete
        (OK_BODY[:-1], (0, 0, False), (0, 0, True)),
        (CHUNKED[:-2], (0, 0, False), (0, 0, True)),
        (b"", (0, 0, False), (0, 0, True)),
    ],
)
def test_counts_complete_answers(data, expected, at_eof):
    assert count(data) == expected
    assert count(bytearray(data)) == expected
    assert count(data, eof=True) == at_eof


@pytest.mark.parametrize(
    "data",
    [
        b"<html>not http</html>\r\n\r\n",
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    ],
)
def test_garbage_is_an_error(data):
    counter = ResponseCounter()
    with pytest.raises(ValueError):
        counter.feed(data)
    assert counter.closing
    counter.feed(OK)  # nothing is parsed after it
    assert counter.answers == 0


def test_answers_before_garbage_still_count():
    counter = ResponseCounter()
    with pytest.raises(ValueError):
        counter.feed(OK + FAIL + b"garbage\r\n\r\n")
    assert (counter.answers, counter.ok, counter.closing) == (2, 1, True)


@given(
    st.lists(st.sampled_from(range(len(RESPONSES))), min_size=1, max_size=12),
    st.lists(st.integers(min_value=1, max_value=64), max_size=40),
)
def test_any_split_of_the_stream_counts_the_same(picks, cuts):
    """Feeding the bytes in arbitrary pieces (as recv does) gives the same totals."""
    stream = b"".join(RESPONSES[i] for i in picks)
    counter, offset = ResponseCounter(), 0
    pieces = []
    for cut in cuts:
        pieces.append(stream[offset : offset + cut])
        offset += cut
    pieces.append(stream[offset:])
    for piece in pieces:
        counter.feed(piece)
        assert not counter.closing
    assert (counter.answers, counter.ok) == (len(picks), sum(IS_OK[i] for i in picks))
    counter.eof()  # nothing was left half-parsed
    assert (counter.answers, counter.ok) == (len(picks), sum(IS_OK[i] for i in picks))


class _Transport:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def _connection(owed: int) -> _Connection:
    conn = _Connection()
    conn.connection_made(_Transport())
    conn.expect(owed)
    return conn


@given(
    st.lists(st.sampled_from(range(len(RESPONSES))), min_size=1, max_size=12),
    st.lists(st.integers(min_value=1, max_value=64), max_size=40),
    st.integers(min_value=0, max_value=12),
)
def test_connection_counts_repeated_and_mixed_answers(picks, cuts, repeat):
    """A batch's answers, however the socket splits them, and the next batch after it."""
    picks = picks + [picks[-1]] * repeat
    stream = b"".join(RESPONSES[i] for i in picks)
    conn = _connection(len(picks))
    offset = 0
    for cut in [*cuts, len(stream)]:
        conn.data_received(stream[offset : offset + cut])
        offset += cut
    assert (conn.owed, conn.ok, conn.reusable) == (0, sum(IS_OK[i] for i in picks), True)
    assert not conn.transport.closed
    conn.expect(2)  # the connection carries the next batch, counted from zero
    conn.data_received(FAIL + OK)
    assert (conn.owed, conn.ok, conn.reusable) == (0, 1, True)


def test_connection_stops_at_a_closing_answer():
    conn = _connection(4)
    conn.data_received(OK + OK + CLOSE + OK)
    assert (conn.owed, conn.ok, conn.reusable, conn.transport.closed) == (1, 3, False, True)


def test_connection_never_counts_past_what_is_owed():
    # More answers than requests: a receiver out of step is not one to keep.
    conn = _connection(2)
    conn.data_received(OK * 3)
    assert (conn.owed, conn.ok, conn.reusable, conn.transport.closed) == (0, 2, False, True)


def test_connection_closes_on_bytes_nobody_asked_for():
    conn = _connection(0)
    conn.data_received(OK)
    assert (conn.reusable, conn.transport.closed) == (False, True)


def test_connection_counts_an_answer_that_runs_to_the_close_at_eof():
    conn = _connection(2)
    conn.data_received(OK + TO_CLOSE)
    assert (conn.owed, conn.ok, conn.reusable) == (1, 1, True)
    conn.connection_lost(None)
    assert (conn.owed, conn.ok, conn.reusable) == (0, 2, False)


def test_connection_keeps_the_answers_before_garbage():
    conn = _connection(3)
    conn.data_received(OK + b"<html>oops</html>\r\n\r\n")
    assert (conn.owed, conn.ok, conn.reusable, conn.transport.closed) == (2, 1, False, True)
