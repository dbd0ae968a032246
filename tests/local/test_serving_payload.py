"""The payload logger against real receivers on 127.0.0.1: batching, pipelining, headers."""

from __future__ import annotations

import asyncio

import orjson

from kubeloop.local.ports import free_port
from kubeloop.serving.metrics import PAYLOAD_EVENTS
from kubeloop.serving.payload import REQUEST_TYPE, RESPONSE_TYPE, EventContext, PayloadLogger
from tests.support.sink import EventSink, _CountingProtocol

CTX = EventContext(model="payload-test", version="v7", endpoint="canary", namespace="ns")


def _sent(outcome: str) -> float:
    return PAYLOAD_EVENTS.labels("payload-test", "v7", outcome)._value.get()


def test_pairs_arrive_with_kserve_headers_and_safe_ids():
    before = _sent("sent")
    with EventSink() as sink:

        async def run():
            logger = PayloadLogger(sink.url, linger_s=0.01)
            for i in range(30):
                logger.log(CTX, f"id-{i}", {"instances": [{"x": i}]}, {"predictions": [i]})
            logger.log(CTX, "evil\r\nCe-Type: forged", {"instances": []}, {"predictions": []})
            await logger.drain(10)
            await logger.close()

        asyncio.run(run())
        pair = {e.headers["ce-type"]: e for e in sink.by_id("id-7")}
        assert set(pair) == {REQUEST_TYPE, RESPONSE_TYPE}
        request = pair[REQUEST_TYPE]
        assert orjson.loads(request.body) == {"instances": [{"x": 7}]}
        assert orjson.loads(pair[RESPONSE_TYPE].body) == {"predictions": [7]}
        assert (
            request.headers["ce-endpoint"] == "canary" and request.headers["ce-namespace"] == "ns"
        )
        assert request.headers["ce-modelversion"] == "v7"
        assert request.headers["ce-time"] == pair[RESPONSE_TYPE].headers["ce-time"]
        forged = [e for e in sink.events if e.headers["ce-id"].startswith("evil")]
        assert len(forged) == 2 and {e.headers["ce-type"] for e in forged} == {
            REQUEST_TYPE,
            RESPONSE_TYPE,
        }
        assert sink.count == 62
    assert _sent("sent") - before == 62


def test_counting_receiver_answers_pipelined_batches():
    async def run():
        counter = [0]
        port = free_port()
        server = await asyncio.get_running_loop().create_server(
            lambda: _CountingProtocol(counter, 0.0), "127.0.0.1", port
        )
        before = _sent("sent")
        logger = PayloadLogger(f"http://127.0.0.1:{port}/", linger_s=0.005, batch_size=50)
        for i in range(400):
            logger.log(CTX, f"c-{i}", {"instances": [{"x": i}]}, {"predictions": [0]})
            if i % 100 == 0:
                await asyncio.sleep(0.02)
        await logger.drain(10)
        await logger.close()
        server.close()
        await server.wait_closed()
        return counter[0], _sent("sent") - before

    received, sent = asyncio.run(run())
    assert received == sent == 800


class _ScriptedReceiver(asyncio.Protocol):
    """Answers each complete POST per ``mode``: 503, or 200 with Connection: close."""

    def __init__(self, mode: str, received: list[int]) -> None:
        self.mode, self.received, self.buffer = mode, received, b""

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            length = int(self.buffer[:end].lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            self.received[0] += 1
            if self.mode == "fail":
                self.transport.write(b"HTTP/1.1 503 Busy\r\ncontent-length: 0\r\n\r\n")
            else:
                self.transport.write(
                    b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
                )
                self.transport.close()
                return


def _run_against(mode: str, pairs: int) -> tuple[int, float, float]:
    async def run():
        received = [0]
        port = free_port()
        server = await asyncio.get_running_loop().create_server(
            lambda: _ScriptedReceiver(mode, received), "127.0.0.1", port
        )
        sent, dropped = _sent("sent"), _sent("dropped")
        logger = PayloadLogger(f"http://127.0.0.1:{port}/", linger_s=0.005, timeout_s=1.0)
        for i in range(pairs):
            logger.log(CTX, f"s-{i}", {"instances": [{"x": i}]}, {"predictions": [0]})
            await asyncio.sleep(0.02)  # one pair per batch
        await logger.drain(10)
        await logger.close()
        server.close()
        await server.wait_closed()
        return received[0], _sent("sent") - sent, _sent("dropped") - dropped

    return asyncio.run(run())


def test_refusing_receiver_counts_every_event_dropped():
    received, sent, dropped = _run_against("fail", 5)
    assert (received, sent, dropped) == (10, 0, 10)


def test_receiver_closing_after_one_answer_costs_the_rest_of_the_batch_only():
    # Each batch's connection answers its first event and closes: the pair's second
    # event is dropped, and the next batch opens a fresh connection.
    received, sent, dropped = _run_against("close", 5)
    assert (sent, dropped) == (5, 5)
    assert received >= 5
