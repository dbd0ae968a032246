"""Operator benchmarks: decision latency and drift-alert-to-retraining-submission time.

    .venv/bin/python bench/operator/run.py [--trials 3] [--out bench/results/operator.json]

1. Core decision latency: one ``reconcile()`` call on a canary step with realistic
   observations (pure function, no I/O).
2. Pass latency (observation to action): one local-driver pass in steady state — seven
   PromQL queries to a real Prometheus, the registry listing, the router's split, the
   core, and the idempotent actuation.
3. Drift alert to run submission, on kubeloop's drift service (its own venv, the prediction
   detector only) fed by the router's payload logger: stationary traffic, then the example
   generator's covariate traffic; t0 is when the service's own ``kubeloop_drift_detected``
   for v1 flips to 1, t1 when the retraining run's folder exists (the submission).
   Bounded by the scrape interval, the poll interval and ``monitoring.driftDurationSeconds``
   (0 here). The onset-to-alarm time (the detector's delay) is reported beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from kubeloop.generated import REPO_ROOT
from kubeloop.local.ports import free_port
from kubeloop.local.wait import wait_until

sys.path.insert(0, str(REPO_ROOT))  # for tests.support when run as a script

HERE = Path(__file__).resolve().parent


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def bench_core(n: int = 2000) -> dict:
    from kubeloop.operators.crd import parse_spec
    from kubeloop.operators.reconciler.core import reconcile
    from kubeloop.operators.reconciler.types import Observations, RegistryVersion, VersionMetrics

    spec = parse_spec({"model": {"name": "fraud-detector"}})
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    reg = (RegistryVersion("v1", True), RegistryVersion("v2", True))
    ready = frozenset({"v1", "v2"})
    # v1 deployed first, then v2 registered: its canary is the step judged below.
    status = reconcile(
        "fd", spec, None, Observations(now=t0, registry_versions=reg[:1], ready_versions=ready)
    ).status
    status = reconcile(
        "fd",
        spec,
        status,
        Observations(now=t0, registry_versions=reg, ready_versions=ready, watched_versions=ready),
    ).status
    buckets = {round(0.05 * i, 2): 5000 * min(1.0, 0.7 + 0.015 * i) for i in range(1, 21)}
    metrics = VersionMetrics(5000, 3, 0.02, buckets, 400, 20)
    obs = Observations(
        now=t0 + timedelta(seconds=600),
        versions={"v1": metrics, "v2": metrics},
        registry_versions=reg,
        ready_versions=ready,
        drift_detected=False,
        watched_versions=ready,
        # one pass 600 s into the step, judged on its evidence (not an operator outage)
        max_pass_gap_seconds=1e6,
    )
    times = []
    for _ in range(n):
        start = time.perf_counter()
        reconcile("fd", spec, status, obs)
        times.append((time.perf_counter() - start) * 1e6)
    return {"calls": n, "median_us": statistics.median(times), "p99_us": pct(times, 0.99)}


SEED = 5  # v1 learns this seed's stationary data; the traffic is its covariate run


def drift_flag(url: str, version: str) -> bool:
    """The drift service's own ``kubeloop_drift_detected`` for ``version`` (any detector's _all)."""
    import httpx

    text = httpx.get(f"{url}/metrics", timeout=5).text
    return any(
        line.startswith("kubeloop_drift_detected{")
        and f'version="{version}"' in line
        and 'feature="_all"' in line
        and float(line.rsplit(" ", 1)[1]) >= 1
        for line in text.splitlines()
    )


def bench_loop(trials: int, cache_dir: Path | None) -> dict:
    import httpx
    from kubeloop.operators.metrics import RolloutMetrics
    from kubeloop.operators.settings import load_operator_settings
    from prometheus_client import CollectorRegistry

    from kubeloop.local.drift import PREDICTION_ONLY_DETECTORS as DRIFT_DETECTORS
    from kubeloop.local.drift import start_drift_service
    from kubeloop.local.operator.driver import LocalOperator
    from kubeloop.local.prometheus import start_prometheus, write_targets
    from kubeloop.local.servers import start_router
    from kubeloop.local.supervisor import Supervisor
    from kubeloop.registry import ModelRegistry
    from kubeloop.training.quick import publish_quick_version
    from tests.support.fixtures import RouterTraffic, covariate_pools

    tmp = Path(tempfile.mkdtemp(prefix="kubeloop-bench-operator-"))
    sup = Supervisor(tmp / "runtime")
    registry = ModelRegistry(str(tmp / "registry"))
    publish_quick_version(registry, "fraud-detector", seed=SEED)
    prom_port, router_port, drift_port = free_port(), free_port(), free_port()
    drift_url = f"http://127.0.0.1:{drift_port}"
    write_targets(tmp / "prom", "drift", [f"127.0.0.1:{drift_port}"])
    start_prometheus(sup, tmp / "prom", prom_port, scrape_interval="1s", wait=False)
    start_drift_service(sup, registry.uri, drift_port, cache_dir=cache_dir or tmp / "drift-cache",
                        detectors=DRIFT_DETECTORS, wait=False)  # fmt: skip
    start_router(sup, tmp / "split.json", router_port, logger_url=drift_url, wait=False)
    traffic = RouterTraffic(f"http://127.0.0.1:{router_port}", *covariate_pools(SEED))
    for name in ("prometheus", "router", "drift"):
        sup.wait_healthy(name, 90)
    # Calibrate v1's thresholds before the trials (the operator's watches then hit the cache).
    warm = httpx.post(
        f"{drift_url}/v1/watch", json={"model": "fraud-detector", "version": "v1"},
        params={"wait": "armed", "timeout": "300"}, timeout=330,
    )  # fmt: skip
    if warm.status_code != 200:
        raise RuntimeError(f"the drift service could not watch v1: {warm.text}")
    manifest = tmp / "md.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kubeloop.io/v1alpha1",
                "kind": "ModelDeployment",
                "metadata": {"name": "fraud-detector"},
                "spec": {
                    "model": {"name": "fraud-detector"},
                    "monitoring": {"driftDurationSeconds": 0},
                    "retraining": {"cooldownSeconds": 0},
                },
            }
        )
    )
    pass_ms, submit_s, detect_s = [], [], []
    traffic.thread.start()
    try:
        for trial in range(trials):
            traffic.drifted = False
            settings = load_operator_settings(
                prometheus_url=f"http://127.0.0.1:{prom_port}",
                router_url=f"http://127.0.0.1:{router_port}",
                drift_service_url=drift_url,
                state_dir=tmp / "runtime" / f"operator-{trial}",
                poll_interval_seconds=1.0,
                min_window_seconds=5,
                local_runner="kubeloop.local.operator.runjob:quick_train",
                prometheus_root=tmp / "prom",
            )
            op = LocalOperator(
                settings,
                supervisor=sup,
                registry_uri=registry.uri,
                metrics=RolloutMetrics(CollectorRegistry()),
            )
            op.store.apply(manifest)

            # The first pass deploys v1 and has the drift service watch it (a fresh reset);
            # wait until its detector has a statistic on stationary traffic and no alarm.
            def served_without_drift(op=op):
                result = op.reconcile_one("fraud-detector")
                ready = any(
                    c.type == "Ready" and c.status == "True" for c in result.status.conditions
                )
                return ready and result.status.drift == "None"

            wait_until(served_without_drift, timeout=180, interval=0.5,
                       what="v1 serving without drift")  # fmt: skip
            for _ in range(10):
                start = time.perf_counter()
                op.reconcile_one("fraud-detector")
                pass_ms.append((time.perf_counter() - start) * 1e3)
            runs = settings.state_dir / "runs"
            if runs.exists() and any(runs.iterdir()):
                raise RuntimeError("a run was submitted before the drift alert")
            stop = threading.Event()
            loop = threading.Thread(target=op.run, args=(stop,), daemon=True)
            loop.start()
            onset = time.monotonic()
            traffic.drifted = True  # covariate traffic from now on
            wait_until(lambda: drift_flag(drift_url, "v1"), timeout=120, interval=0.02,
                       what="the drift service's alarm")  # fmt: skip
            t0 = time.monotonic()
            detect_s.append(t0 - onset)
            wait_until(lambda runs=runs: runs.exists() and any(runs.glob("*/params.json")), timeout=60,
                       interval=0.02, what="a retraining run submitted after the alarm")  # fmt: skip
            submit_s.append(time.monotonic() - t0)
            stop.set()
            loop.join(10)
            for record in sup.list():
                if record.name.startswith("run-"):
                    sup.stop(record.name)
    finally:
        traffic.stop.set()
        traffic.thread.join(10)
        sup.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "trials": trials,
        "pass_ms": {
            "n": len(pass_ms),
            "median": statistics.median(pass_ms),
            "p95": pct(pass_ms, 0.95),
        },
        "drift_to_submission_s": {
            "values": [round(v, 2) for v in submit_s],
            "median": statistics.median(submit_s),
        },
        "onset_to_alarm_s": {
            "values": [round(v, 2) for v in detect_s],
            "median": statistics.median(detect_s),
        },
        "settings": {
            "scrape_interval_s": 1,
            "poll_interval_s": 1,
            "drift_duration_s": 0,
            "traffic": "20 requests/s of 5 transactions through the router",
            "drift_detectors": DRIFT_DETECTORS,
        },
    }


BEGIN, END = "<!-- operator:begin -->", "<!-- operator:end -->"


def markdown(results: dict, command: str) -> str:
    core, loop = results["core"], results["loop"]
    drift, alarm = loop["drift_to_submission_s"], loop["onset_to_alarm_s"]
    return "\n".join(
        [
            BEGIN,
            "## Operator",
            "",
            f"Command: `{command}` ({results['machine']}; a real Prometheus scraping every 1 s, "
            "the router and a predictor as processes, kubeloop's drift service fed by the "
            "router's payload logger (prediction detector only), the local "
            "driver polling every 1 s; 20 requests/s of 5 transactions).",
            "",
            "| measure | median | tail |",
            "| --- | ---: | ---: |",
            f"| core decision, one `reconcile()` on a canary step (pure) | {core['median_us']:.0f} µs "
            f"| p99 {core['p99_us']:.0f} µs |",
            f"| one local pass, observation to action (7 PromQL queries, registry, router, core, actuation) "
            f"| {loop['pass_ms']['median']:.1f} ms | p95 {loop['pass_ms']['p95']:.1f} ms |",
            f"| drift alert (the drift service's `kubeloop_drift_detected` flips to 1) to retraining "
            f"run submitted, driftDurationSeconds=0 | {drift['median']:.2f} s "
            f"| runs: {', '.join(f'{v:.2f}' for v in drift['values'])} s |",
            f"| covariate traffic starts to the drift service's alarm (for reference) "
            f"| {alarm['median']:.2f} s | runs: {', '.join(f'{v:.2f}' for v in alarm['values'])} s |",
            "",
            "The drift-to-submission time is bounded by one scrape interval plus one poll interval; "
            "in production `monitoring.driftDurationSeconds` (minutes) dominates it by design.",
            END,
        ]
    )


def write_docs(block: str, path: Path = Path("docs/benchmarks.md")) -> None:
    text = path.read_text() if path.exists() else "# kubeloop benchmarks\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/operator.json"))
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="drift detector threshold cache (default: a fresh folder; calibrated once in set-up)",
    )
    parser.add_argument(
        "--write-docs",
        action="store_true",
        help="update the Operator section of docs/benchmarks.md",
    )
    args = parser.parse_args()
    results = {
        "machine": f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}",
        "core": bench_core(),
        "loop": bench_loop(args.trials, args.cache_dir),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    if args.write_docs:
        write_docs(
            markdown(
                results,
                f".venv/bin/python bench/operator/run.py --trials {args.trials} --write-docs",
            )
        )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
