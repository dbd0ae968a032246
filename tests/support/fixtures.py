"""Traffic for tests and benchmarks: a sample transaction, request pools from before and
after a covariate onset, and a steady request stream through a router."""

from __future__ import annotations

import json
import random
import threading
import time

import httpx

from kubeloop.data import fraud
from kubeloop.features.join import point_in_time_join

# One full feature row of the fraud example (a suspicious-looking transaction) for requests.
SAMPLE_TRANSACTION = {
    "amount": 420.0,
    "merchant_category": "electronics",
    "hour": 2,
    "distance_from_home_km": 250.0,
    "is_foreign": 1,
    "txn_count_1h": 4,
    "account_age_days": 30.0,
    "avg_amount_30d": 40.0,
    "txn_count_24h": 2.0,
}

# An everyday transaction (not suspicious), for routing and fuzz tests.
ROUTINE_TRANSACTION = {
    "amount": 80.0,
    "merchant_category": "online",
    "hour": 21,
    "distance_from_home_km": 12.0,
    "is_foreign": 0,
    "txn_count_1h": 2,
    "account_age_days": 400.0,
    "avg_amount_30d": 60.0,
    "txn_count_24h": 3.0,
}


def covariate_pools(seed: int, days: float = 7.0, accounts: int = 200) -> tuple[list, list]:
    """Instances (features and the entity key) from before and after the covariate onset of
    the example generator's run with ``seed``."""
    data = fraud.generate("covariate", days=days, n_accounts=accounts, seed=seed)
    frame = point_in_time_join(data)
    after = (frame["event_timestamp"] >= data.truth.onset_time).to_numpy()
    columns = [*fraud.FRAUD_SCHEMA.feature_names, "account_id"]
    rows = json.loads(frame[columns].to_json(orient="records"))  # plain JSON types
    return [r for r, a in zip(rows, after, strict=True) if not a], [
        r for r, a in zip(rows, after, strict=True) if a
    ]


class RouterTraffic:
    """Posts ``batch`` transactions through a router at a steady ``rate`` (requests/s) from a
    thread; ``drifted`` switches from the stationary pool to the drifted one. Counts requests
    sent and failed (5xx or no answer, e.g. while the router restarts) and goes on."""

    def __init__(
        self,
        url: str,
        stationary: list[dict],
        drifted: list[dict],
        rate: float = 20.0,
        batch: int = 5,
        model: str = "fraud-detector",
    ) -> None:
        self.url, self.pools, self.interval = url, (stationary, drifted), 1.0 / rate
        self.batch, self.model = batch, model
        self.drifted = False
        self.stop = threading.Event()
        self.sent = self.failed = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rng = random.Random(0)
        next_at = time.monotonic()
        with httpx.Client(timeout=10) as client:
            while not self.stop.is_set():
                try:
                    r = client.post(
                        f"{self.url}/v1/models/{self.model}:predict",
                        json={"instances": rng.sample(self.pools[self.drifted], self.batch)},
                        headers={"X-Kubeloop-Key": str(rng.random())},
                    )
                    self.sent += 1
                    self.failed += r.status_code >= 500
                except httpx.HTTPError:
                    self.failed += 1
                next_at += self.interval
                self.stop.wait(max(0.0, next_at - time.monotonic()))
