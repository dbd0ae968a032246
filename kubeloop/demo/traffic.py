"""Replays the stream through the router at a steady rate and posts the delayed labels.

One background thread sends one request of ``batch`` instances every
``batch / rate`` seconds (it catches up after a slow answer rather than drifting), with
an ``X-Request-Id`` it chose, so the ground truth can follow ``label_delay`` seconds
later to the drift service's ``/v1/feedback`` under the same id (the predictor's
payload events carry it as ``Ce-Id``). Labelled rows are also written to
``labelled.parquet`` (features, label, ``labelled_at``, ``sent_at``, account and
transaction ids, the version that answered), the recent window that retraining runs
learn from; with ``labelled_path=None`` (no retraining to feed) they are not kept.

With ``online_features`` the requests carry the request features and the account only
(the predictor enriches them from Feast's online store), and ``on_day`` hears of each
new day of the replay before its first request, so the store can be brought to it.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pandas as pd

from kubeloop.demo.stream import ReplayStream
from kubeloop.local.wait import wait_until


@dataclass
class Answer:
    """One request through the router, as the caller saw it."""

    sent_at: float
    request_id: str
    first_row: int
    version: str | None
    role: str | None
    status: int
    predicted: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    labelled_at: float | None = None

    @property
    def correct(self) -> int:
        return sum(int(p == y) for p, y in zip(self.predicted, self.labels, strict=False))


class TrafficReplayer:
    def __init__(
        self,
        stream: ReplayStream,
        router_url: str,
        drift_url: str,
        model: str,
        *,
        rate: float,
        batch: int,
        label_delay: float,
        labelled_path: Path | None,
        online_features: bool = False,
        on_day: Callable[[pd.Timestamp], None] | None = None,
    ) -> None:
        if online_features and stream.requests is None:
            raise ValueError("online_features needs the stream's entity-key requests")
        self.stream = stream
        self.sent_rows = stream.requests if online_features else stream.instances
        self.on_day = on_day if stream.days is not None else None
        self._day: pd.Timestamp | None = None
        self.router_url = router_url.rstrip("/")
        self.drift_url = drift_url.rstrip("/")
        self.model = model
        self.interval = batch / rate
        self.batch = batch
        self.label_delay = label_delay
        self.labelled_path = Path(labelled_path) if labelled_path is not None else None
        self.answers: list[Answer] = []
        self.started_at: float | None = None
        self.onset_at: float | None = None  # wall time the first post-onset row was sent
        self.feedback_failed = 0
        self.feedback_unwatched = 0
        self.errors: deque[str] = deque(maxlen=20)
        self._pending: deque[Answer] = deque()
        self._labelled: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)
        self._next_row = 0

    # --- control ----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(15)
        self._flush_labelled()

    @property
    def exhausted(self) -> bool:
        return self._next_row >= len(self.stream)

    @property
    def sent(self) -> int:
        return len(self.answers)

    @property
    def failed(self) -> int:
        return sum(a.status >= 500 or a.status == 0 for a in self.answers)

    # --- the loop ----------------------------------------------------------------------------
    def _run(self) -> None:
        self.started_at = time.time()
        next_at = time.monotonic()
        last_flush = time.monotonic()
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set() and not self.exhausted:
                self._send(client)
                self._deliver_labels(client, time.time())
                if time.monotonic() - last_flush > 2:
                    self._flush_labelled()
                    last_flush = time.monotonic()
                next_at += self.interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                elif delay < -5 * self.interval:  # far behind: do not burst to catch up
                    next_at = time.monotonic()

            # labels still owed for requests already answered
            def delivered() -> bool:
                self._deliver_labels(client, time.time())
                return not self._pending or self._stop.is_set()

            with contextlib.suppress(TimeoutError):  # labels still owed then are dropped
                wait_until(delivered, timeout=self.label_delay + 1, what="labels still owed")

    def _send(self, client: httpx.Client) -> None:
        first = self._next_row
        rows = range(first, min(first + self.batch, len(self.stream)))
        self._next_row = rows.stop
        if self.onset_at is None and rows.stop > self.stream.onset_index:
            self.onset_at = time.time()
        if self.on_day is not None and (day := self.stream.days.iloc[first]) != self._day:
            self._day = day
            self.on_day(day)
        request_id = uuid.uuid4().hex
        sent_at = time.time()
        answer = Answer(sent_at, request_id, first, None, None, 0)
        try:
            response = client.post(
                f"{self.router_url}/v1/models/{self.model}:predict",
                json={"instances": [self.sent_rows[i] for i in rows]},
                headers={"X-Request-Id": request_id, "X-Kubeloop-Key": request_id},
            )
            answer.status = response.status_code
            answer.role = response.headers.get("x-kubeloop-role")
            if response.status_code == 200:
                body = response.json()
                answer.version = body.get("model_version")
                answer.predicted = [int(p["label"]) for p in body["predictions"]]
                answer.labels = [int(self.stream.labels[i]) for i in rows]
                self._pending.append(answer)
            else:
                self.errors.append(f"{response.status_code}: {response.text[:200]}")
        except httpx.HTTPError as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
        self.answers.append(answer)

    def _deliver_labels(self, client: httpx.Client, now: float) -> None:
        due = []
        while self._pending and self._pending[0].sent_at + self.label_delay <= now:
            due.append(self._pending.popleft())
        if not due:
            return
        # One post per request: the drift service refuses a whole batch when one id is
        # unknown to it, as ids answered by a version it does not watch (a canary) are.
        for answer in due:
            try:
                response = client.post(
                    f"{self.drift_url}/v1/feedback",
                    json={"request_id": answer.request_id, "labels": answer.labels},
                )
                if response.status_code == 404:
                    self.feedback_unwatched += 1
                elif response.status_code >= 300:
                    self.feedback_failed += 1
                    self.errors.append(f"feedback {response.status_code}: {response.text[:200]}")
            except httpx.HTTPError as exc:
                self.feedback_failed += 1
                self.errors.append(f"feedback: {exc}")
        from kubeloop.data.fraud import FRAUD_SCHEMA

        stream = self.stream
        for answer in due:
            answer.labelled_at = now
            if self.labelled_path is None:
                continue
            for offset, label in enumerate(answer.labels):
                i = answer.first_row + offset
                row = dict(stream.instances[i])
                row[FRAUD_SCHEMA.label] = label
                row["labelled_at"] = now
                row["sent_at"] = answer.sent_at  # the prediction's time: the event timestamp
                row["version"] = answer.version or ""  # the version that answered
                if stream.account_ids is not None:
                    row[FRAUD_SCHEMA.entity] = int(stream.account_ids[i])
                if stream.transaction_ids is not None:
                    row["transaction_id"] = stream.transaction_ids[i]
                self._labelled.append(row)

    def _flush_labelled(self) -> None:
        if not self._labelled or self.labelled_path is None:
            return
        self.labelled_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.labelled_path.with_suffix(".tmp.parquet")
        pd.DataFrame.from_records(self._labelled).to_parquet(tmp, index=False)
        tmp.replace(self.labelled_path)
