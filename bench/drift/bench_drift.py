"""Drift service benchmark: sustained events/s with every detector on, detector set-up
time cold and cached, and detection delay versus ERT on the fraud scenarios.

Run: ``.venv/bin/python bench/drift/bench_drift.py [--pairs 20000] [--out bench/results/drift.json]``
(needs ``make drift-env``). Prints a Markdown section for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pandas as pd

from kubeloop.generated import REPO_ROOT
from kubeloop.monitoring.local import drift_python, payload_pair, start_drift_service
from kubeloop.monitoring.scenarios import write_fraud_scenarios
from kubeloop.registry import ModelRegistry
from kubeloop.testing import make_registry_version

MODEL = "fraud-detector"


def _watch(url: str) -> dict:
    r = httpx.post(url + "/v1/watch", json={"model": MODEL, "version": "v1"}, timeout=1800)
    r.raise_for_status()
    return r.json()


async def _send(url: str, events: list[tuple[dict, bytes]], concurrency: int) -> float:
    import aiohttp  # a lighter client than httpx: the client shares the 2 cores with the service

    queue: asyncio.Queue = asyncio.Queue()
    for i in range(0, len(events), 2):
        queue.put_nowait(events[i : i + 2])
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(base_url=url, connector=connector) as client:

        async def worker() -> None:
            while not queue.empty():
                for headers, body in queue.get_nowait():  # request before its response
                    async with client.post("/", headers=headers, data=body) as r:
                        if r.status != 202:
                            raise RuntimeError(await r.text())

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - start


def throughput(work: Path, registry: Path, pairs: int, concurrency: int) -> dict:
    ref = pd.read_parquet(registry / MODEL / "versions" / "v1" / "reference.parquet")
    feats = [c for c in ref.columns if c not in ("is_fraud", "prediction_score", "prediction")]
    rows = ref.sample(n=pairs, replace=True, random_state=0).reset_index(drop=True)
    records = rows[feats].to_dict("records")
    events = []
    for i, rec in enumerate(records):
        _, evs = payload_pair(
            [rec], [float(rows["prediction_score"][i])], [int(rows["prediction"][i])], MODEL, "v1"
        )
        events += evs
    out: dict = {}
    with start_drift_service(registry, work) as svc:
        t = time.perf_counter()
        snap = _watch(svc.url)
        out["setup_cold_s"] = time.perf_counter() - t
        out["setup_cold_by_detector_s"] = {
            k: v["setup_seconds"] for k, v in snap["detectors"].items()
        }
    with start_drift_service(registry, work) as svc:
        t = time.perf_counter()
        snap = _watch(svc.url)
        out["setup_cached_s"] = time.perf_counter() - t
        out["cache_hits"] = all(v["cache_hit"] for v in snap["detectors"].values())
        start = time.perf_counter()
        send_s = asyncio.run(_send(svc.url, events, concurrency))
        status = httpx.get(
            svc.url + "/v1/status", params={"wait": "idle", "timeout": "600"}, timeout=700
        ).json()
        total_s = time.perf_counter() - start
        watched = status["watched"][0]
        out.update(
            pairs=pairs,
            http_events=len(events),
            concurrency=concurrency,
            accepted_events_per_s=len(events) / send_s,
            accepted_pairs_per_s=pairs / send_s,
            processed_pairs_per_s=watched["samples"] / total_s,
            processed_events_per_s=2 * watched["samples"] / total_s,
            detector_steps={k: v["steps"] for k, v in watched["detectors"].items()},
            settings=snap.get("settings"),
        )
    return out


def delays(folder: Path, erts: list[int]) -> list[dict]:
    paths = write_fraud_scenarios(folder / "scenarios", seed=0)
    rows = []
    for ert in erts:
        for scenario in ("covariate", "concept", "label_shift"):
            cmd = [str(drift_python()), "-m", "kubeloop.monitoring.calibration", "--mode", "delay",
                   "--reference", str(paths["reference"]), "--schema", str(paths["schema"]),
                   "--stream", str(paths[scenario]), "--null", str(paths["null"]), "--warmup", "100",
                   "--settings", json.dumps({"ert": ert}), "--cache-dir", str(folder / "cache")]  # fmt: skip
            res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, check=True)
            det = json.loads(res.stdout.strip().splitlines()[-1])["detectors"]
            rows.append(
                {"ert": ert, "scenario": scenario, **{k: v["delay_events"] for k, v in det.items()}}
            )
    return rows


def markdown(tp: dict, table: list[dict], command: str) -> str:
    lines = [
        "## Drift service (bench/drift)",
        "",
        f"Command: `{command}` on this 2-core machine (client and service share the cores).",
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| detector set-up, cold (empty cache) | {tp['setup_cold_s']:.1f} s |",
        f"| detector set-up, cached thresholds | {tp['setup_cached_s']:.1f} s |",
        f"| cold set-up by detector | {', '.join(f'{k} {v:.1f}s' for k, v in tp['setup_cold_by_detector_s'].items())} |",
        f"| CloudEvents accepted (HTTP, {tp['concurrency']} connections) | {tp['accepted_events_per_s']:.0f} events/s |",
        f"| request/response pairs through all detectors | {tp['processed_pairs_per_s']:.0f} pairs/s "
        f"= {tp['processed_events_per_s']:.0f} events/s |",
        f"| detector steps for {tp['pairs']} pairs | {tp['detector_steps']} |",
        "",
        "Detection delay (drifted instances until the alarm, warm-up of 100 stationary rows, every",
        "instance fed to every detector; `None` = not detected in the drifted window):",
        "",
        "| ERT (steps) | scenario | mmd | cvm | fet | prediction | error_rate |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in table:
        lines.append(
            f"| {r['ert']} | {r['scenario']} | "
            + " | ".join(str(r.get(k)) for k in ("mmd", "cvm", "fet", "prediction", "error_rate"))
            + " |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=20000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--erts", default="100,500,1000")
    p.add_argument(
        "--work", type=Path, help="keep the registry and threshold cache here (reruns start warm)"
    )
    p.add_argument("--skip-delays", action="store_true")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "drift.json")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="kubeloop-bench-drift-") as tmp:
        work = args.work or Path(tmp)
        registry = work / "registry"
        if not (registry / MODEL).exists():
            make_registry_version(
                ModelRegistry(str(registry)), MODEL, seed=0, n_accounts=600, days=10
            )
        tp = throughput(work / "svc", registry, args.pairs, args.concurrency)
        table = [] if args.skip_delays else delays(work, [int(e) for e in args.erts.split(",")])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"throughput": tp, "delays": table}, indent=2, default=str))
    cmd = "python bench/drift/bench_drift.py " + " ".join(
        f"--{k} {v}"
        for k, v in (("pairs", args.pairs), ("concurrency", args.concurrency), ("erts", args.erts))
    )
    print(markdown(tp, table, cmd))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
