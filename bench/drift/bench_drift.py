"""Drift service benchmark, for each method (``cusum``, the default, and ``alibi``):
sustained events/s with every detector on, detector set-up (arming) time per detector
cold, cached and for a reference seen before, stationary run length over the ERT, and
detection delay versus ERT on the fraud scenarios.

Run: ``.venv/bin/python -m kubeloop.bench --only drift`` (rewrites the ``drift`` section of
docs/benchmarks.md), or ``.venv/bin/python bench/drift/bench_drift.py [--work DIR]`` to print
it. Needs ``make drift-env``. The alibi method's cold set-up (empty threshold cache) takes
minutes, mostly the FET calibration; ``--work DIR`` (or ``KUBELOOP_BENCH_DRIFT_WORK=DIR`` under
``kubeloop.bench``) keeps the registry and the threshold cache there, so a rerun measures
only its cached set-up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pandas as pd
import psutil

from kubeloop.bench.runner import markdown_table
from kubeloop.drift.params import MAX_WAIT_SECONDS
from kubeloop.generated import REPO_ROOT
from kubeloop.local.drift import drift_python, start_drift_service
from kubeloop.local.runtime import DEMO_DRIFT_DETECTORS
from kubeloop.local.supervisor import Supervisor
from kubeloop.registry import ModelRegistry
from kubeloop.training.quick import publish_quick_version

sys.path.insert(0, str(REPO_ROOT))  # for tests.support when run as a script
from tests.support.drift_scenarios import (  # noqa: E402
    write_awkward_scenario,
    write_fraud_scenarios,
    write_river_scenario,
)
from tests.support.events import payload_pair  # noqa: E402

MODEL = "fraud-detector"


METHODS = ("cusum", "alibi")
UNCACHED = {"predicted_class"}  # detectors whose thresholds are computed, not cached
# The demo's expected run times (kubeloop.local.runtime.DEMO_DRIFT_DETECTORS): what "armed
# in seconds at ERTs at least as long as the demo's" is measured at.
DEMO_ERTS = {
    k: float(DEMO_DRIFT_DETECTORS[k]) for k in ("ert", "error_rate_ert", "predicted_class_ert")
}


def _watch(url: str, detectors: dict | None = None, reset: bool = False) -> dict:
    """Watches v1 and returns once its detectors are armed (a cold alibi set-up takes minutes)."""
    body = {
        "model": MODEL,
        "version": "v1",
        "reset": reset,
        **({"detectors": detectors} if detectors else {}),
    }
    while True:  # each call waits up to 300 s; asked again, an arming watch is not restarted
        r = httpx.post(url + "/v1/watch", json=body,
                       params={"wait": "armed", "timeout": "300"}, timeout=330)  # fmt: skip
        if r.status_code != 202:
            r.raise_for_status()
            return r.json()


async def _send(
    url: str, events: list[tuple[dict, bytes]], concurrency: int, feedback: list[dict]
) -> float:
    """Posts each request/response pair, then its label (``POST /v1/feedback``), as the
    router and the label join would: every detector, the error-rate one included, steps."""
    import aiohttp  # a lighter client than httpx: the client shares the 2 cores with the service

    queue: asyncio.Queue = asyncio.Queue()
    for i in range(0, len(events), 2):
        queue.put_nowait((events[i : i + 2], feedback[i // 2]))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(base_url=url, connector=connector) as client:

        async def worker() -> None:
            while not queue.empty():
                pair, label = queue.get_nowait()
                for headers, body in pair:  # request before its response
                    async with client.post("/", headers=headers, data=body) as r:
                        if r.status != 202:
                            raise RuntimeError(await r.text())
                async with client.post("/v1/feedback", json=label) as r:
                    if r.status >= 300:
                        raise RuntimeError(await r.text())

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - start


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def throughput(work: Path, registry: Path, pairs: int, concurrency: int, method: str) -> dict:
    ref = pd.read_parquet(registry / MODEL / "versions" / "v1" / "reference.parquet")
    feats = [c for c in ref.columns if c not in ("is_fraud", "prediction_score", "prediction")]
    rows = ref.sample(n=pairs, replace=True, random_state=0).reset_index(drop=True)
    records = rows[feats].to_dict("records")
    events, feedback = [], []
    for i, rec in enumerate(records):
        rid, evs = payload_pair(
            [rec], [float(rows["prediction_score"][i])], [int(rows["prediction"][i])], MODEL, "v1"
        )
        events += evs
        feedback.append({"request_id": rid, "labels": [int(rows["is_fraud"][i])]})
    out: dict = {"method": method}
    env = {"KUBELOOP_DRIFT_METHOD": method}
    cache = work / "drift-cache"  # the second service finds the first one's thresholds
    with (
        Supervisor(work / "runtime") as sup,
        start_drift_service(sup, registry, cache_dir=cache, env=env) as svc,
    ):
        t = time.perf_counter()
        snap = _watch(svc.url)
        out["setup_cold_s"] = time.perf_counter() - t
        out["setup_cold_by_detector_s"] = {
            k: v["setup_seconds"] for k, v in snap["detectors"].items()
        }
        if method == "cusum":  # the demo's ERTs, then the same again: a reference seen before
            for key, reset in (("setup_demo_ert", False), ("setup_demo_ert_again", True)):
                t = time.perf_counter()
                snap = _watch(svc.url, {**DEMO_ERTS, "mmd_every": 1, "univariate_every": 1}, reset)
                out[key + "_s"] = time.perf_counter() - t
                out[key + "_by_detector_s"] = {
                    k: v["setup_seconds"] for k, v in snap["detectors"].items()
                }
    with (
        Supervisor(work / "runtime") as sup,
        start_drift_service(sup, registry, cache_dir=cache, env=env) as svc,
    ):
        t = time.perf_counter()
        snap = _watch(svc.url)
        out["setup_cached_s"] = time.perf_counter() - t
        out["setup_cached_by_detector_s"] = {
            k: v["setup_seconds"] for k, v in snap["detectors"].items()
        }
        # Exact thresholds (every cusum detector, the predicted-class charts) are never cached.
        out["cache_hits"] = (
            all(v["cache_hit"] for name, v in snap["detectors"].items() if name not in UNCACHED)
            if method == "alibi"
            else None
        )
        worker_pid = httpx.get(svc.url + "/v1/status").json()["worker"]["pid"]
        cpu_before = {"http": _cpu_seconds(svc.pid), "worker": _cpu_seconds(worker_pid)}
        start = time.perf_counter()
        send_s = asyncio.run(_send(svc.url, events, concurrency, feedback))
        # The service waits at most MAX_WAIT_SECONDS per request (a longer timeout is a 400).
        answer = httpx.get(
            svc.url + "/v1/status",
            params={"wait": "idle", "timeout": str(int(MAX_WAIT_SECONDS))},
            timeout=MAX_WAIT_SECONDS + 30,
        )
        answer.raise_for_status()
        status = answer.json()
        total_s = time.perf_counter() - start
        # CPU time per event of each service process: what one dedicated core each would
        # sustain, whatever else shares this machine's cores during the run.
        cpu_us = {
            "http": (_cpu_seconds(svc.pid) - cpu_before["http"]) / len(events) * 1e6,
            "worker": (_cpu_seconds(worker_pid) - cpu_before["worker"])
            / max(2 * status["watched"][0]["samples"], 1)
            * 1e6,
        }
        out["cpu_us_per_event"] = cpu_us
        out["capacity_events_per_s"] = 1e6 / max(cpu_us.values())
        watched = status["watched"][0]
        out.update(
            pairs=pairs,
            http_events=len(events),
            concurrency=concurrency,
            accepted_events_per_s=len(events) / send_s,
            accepted_pairs_per_s=pairs / send_s,
            processed_pairs_per_s=watched["samples"] / total_s,
            processed_events_per_s=2 * watched["samples"] / total_s,
            dropped=status.get("dropped", 0),
            detector_steps={k: v["steps"] for k, v in watched["detectors"].items()},
            settings=snap.get("settings"),
        )
    return out


def _calibrate(
    paths: dict, folder: Path, mode: str, stream: str, settings: dict, *extra: str
) -> dict:
    cmd = [str(drift_python()), "-m", "kubeloop.drift.calibration", "--mode", mode,
           "--reference", str(paths["reference"]), "--schema", str(paths["schema"]),
           "--stream", str(paths[stream]), "--null", str(paths["null"]),
           "--settings", json.dumps(settings), "--cache-dir", str(folder / "cache"), *extra]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])["detectors"]


def delays(folder: Path, erts: list[int]) -> list[dict]:
    paths = write_fraud_scenarios(folder / "scenarios", seed=0)
    rows = []
    for method in METHODS:
        for ert in erts:
            for scenario in ("covariate", "concept", "label_shift"):
                det = _calibrate(paths, folder, "delay", scenario, {"ert": ert, "method": method},
                                 "--warmup", "100")  # fmt: skip
                rows.append({"method": method, "ert": ert, "scenario": scenario,
                             **{k: v["delay_events"] for k, v in det.items()}})  # fmt: skip
    return rows


def run_lengths(
    folder: Path, draws: int = 20, alibi_draws: int = 20, error_draws: int = 60
) -> list[dict]:
    """Stationary run length over the ERT of every detector (one step per instance), both
    methods: the fraud and river streams (ERT 100, 400 runs) and a stream of ties, integer
    counts, near-constant columns, rare categories, saturated scores and held-out errors
    pooled over reference draws (ERT 200, 40 runs each: ``draws`` for cusum,
    ``alibi_draws`` for alibi, whose thresholds are simulated afresh for each draw).

    alibi's Cramér–von Mises and MMD thresholds target the ERT averaged over reference
    draws (the run length given one draw ranges from about 0.5 to 1.6 x ERT), so their
    rows pool 20 and 10 draws; FET's thresholds hold given the reference: one draw.

    The error-rate detector's run length depends on how far the reference's error rate
    (2,000 held-out predictions) lies from the stream's: 0.5 to 2 x ERT per draw, so 20
    draws leave its mean about ±0.2 uncertain; it is cheap, and pools ``error_draws``."""
    every = {"univariate_every": 1, "mmd_every": 1}
    fraud = write_fraud_scenarios(folder / "scenarios", seed=0)
    river = write_river_scenario(folder / "river", seed=0)
    alibi = {"method": "alibi", **every}
    calls = [  # method, stream, paths, detectors, settings, reference draws
        ("cusum", "fraud", fraud, "mmd,cvm,fet,prediction,predicted_class", every, 1),
        ("cusum", "river SEA", river, "mmd,cvm,prediction,error_rate,predicted_class", every, 1),
        ("alibi", "fraud", fraud, "cvm,prediction", alibi, 20),
        ("alibi", "fraud", fraud, "mmd", {**alibi, "mmd_reference_rows": 500}, 10),
        ("alibi", "fraud", fraud, "fet", alibi, 1),
        ("alibi", "river SEA", river, "cvm,prediction", alibi, 20),
        ("alibi", "river SEA", river, "error_rate", alibi, 1),
    ]
    rows = []
    for method, name, paths, dets, settings, repeats in calls:
        det = _calibrate(paths, folder, "ert", "null", {"ert": 100, **settings}, "--runs", "400",
                         "--repeats", str(repeats), "--detectors", dets)  # fmt: skip
        rows.append({"method": method, "stream": name, "ert": 100, "draws": repeats, "runs": 400,
                     **{k: v["ratio"] for k, v in det.items()}})  # fmt: skip
    awkward = "ties, integers, near-constant, saturated scores"
    for method, n, settings in (("cusum", draws, every), ("alibi", alibi_draws, alibi)):
        pooled: dict[str, list[float]] = {}
        for seed in range(max(n, error_draws)):
            paths = write_awkward_scenario(folder / f"awkward-{seed}", seed=seed, rows=6000)
            only = () if seed < n else ("--detectors", "error_rate")  # the cheap one goes on
            det = _calibrate(paths, folder, "ert", "null", {"ert": 200, **settings}, "--runs",
                             "40", *only)  # fmt: skip
            for k, v in det.items():
                pooled.setdefault(k, []).append(v["ratio"])
        errors = pooled.pop("error_rate", [])
        rows.append({"method": method, "stream": awkward, "ert": 200, "draws": n, "runs": 40 * n,
                     **{k: sum(v) / len(v) for k, v in pooled.items()}})  # fmt: skip
        if errors:
            rows.append({"method": method, "stream": f"{awkward}: held-out errors", "ert": 200,
                         "draws": len(errors), "runs": 40 * len(errors),
                         "error_rate": sum(errors) / len(errors)})  # fmt: skip
    return rows


def _load() -> str:
    return os.getloadavg()[0].__format__(".1f")


def measure(work: Path | None, pairs: int, concurrency: int, erts: list[int]) -> dict:
    """Throughput and set-up (a fresh cache unless ``work`` already holds one), then delays."""
    with tempfile.TemporaryDirectory(prefix="kubeloop-bench-drift-") as tmp:
        work = work or Path(tmp)
        registry = work / "registry"
        cold = not (work / "svc" / "drift-cache").exists()
        if not (registry / MODEL).exists():
            publish_quick_version(
                ModelRegistry(str(registry)), MODEL, seed=0, n_accounts=600, days=10
            )
        by_method = {}
        for method in METHODS:
            load_before = _load()
            tp = throughput(work / "svc", registry, pairs, concurrency, method)
            tp.update(cold=cold, load_before=load_before, load_after=_load())
            record = work / "cold-setup.json"  # a reused cache keeps the cold numbers it came from
            if method == "alibi" and cold:
                record.write_text(json.dumps({"measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                              "setup_s": tp["setup_cold_s"],
                                              "by_detector_s": tp["setup_cold_by_detector_s"]}))  # fmt: skip
            elif method == "alibi" and record.exists():
                tp["earlier_cold"] = json.loads(record.read_text())
            by_method[method] = tp
        table = delays(work, erts) if erts else []
        lengths = run_lengths(work)
    return {"throughput": by_method, "delays": table, "run_lengths": lengths}


def _erts() -> str:
    e = DEMO_ERTS
    return (f"{e['ert']:.0e} predictions per input and score detector, {e['error_rate_ert']:,.0f} "
            f"labels, {e['predicted_class_ert']:.0e} predictions per class")  # fmt: skip


def _by_detector(seconds: dict) -> str:
    return ", ".join(f"{k} {v:.2f}s" for k, v in seconds.items())


def table_rows(result: dict) -> list[dict]:
    rows = []
    for method, tp in result["throughput"].items():
        ert = tp["settings"]["ert"]
        if method == "cusum":
            rows += [
                {"measure": f"cusum: arming, first watch (ERT {ert:g})",
                 "value": f"{tp['setup_cold_s']:.2f} s", "detail": _by_detector(tp["setup_cold_by_detector_s"])},
                {"measure": f"cusum: arming at the demo's ERTs ({_erts()}), a new reference",
                 "value": f"{tp['setup_demo_ert_s']:.2f} s", "detail": _by_detector(tp["setup_demo_ert_by_detector_s"])},
                {"measure": "cusum: arming at the demo's ERTs, the same reference again (reset)",
                 "value": f"{tp['setup_demo_ert_again_s']:.2f} s",
                 "detail": _by_detector(tp["setup_demo_ert_again_by_detector_s"])},
                {"measure": f"cusum: arming after a service restart (ERT {ert:g}; nothing is cached)",
                 "value": f"{tp['setup_cached_s']:.2f} s", "detail": _by_detector(tp["setup_cached_by_detector_s"])},
            ]  # fmt: skip
        else:
            setup = "cold (empty cache)" if tp["cold"] else "cached (reused --work)"
            if cold := tp.get("earlier_cold"):
                rows.append({"measure": f"alibi: arming, cold (empty cache; run of {cold['measured']})",
                             "value": f"{cold['setup_s']:.1f} s", "detail": _by_detector(cold["by_detector_s"])})  # fmt: skip
            rows += [
                {"measure": f"alibi: arming, first watch, {setup} (ERT {ert:g})",
                 "value": f"{tp['setup_cold_s']:.1f} s", "detail": _by_detector(tp["setup_cold_by_detector_s"])},
                {"measure": "alibi: arming, thresholds cached (service restart)",
                 "value": f"{tp['setup_cached_s']:.1f} s", "detail": f"cache hits: {tp['cache_hits']}"},
            ]  # fmt: skip
        rows += [
            {"measure": f"{method}: CloudEvents accepted over HTTP ({tp['concurrency']} connections)",
             "value": f"{tp['accepted_events_per_s']:.0f} events/s",
             "detail": f"{tp['http_events']} events and one label per pair (POST /v1/feedback), "
                       "aiohttp client on the same cores"},
            {"measure": f"{method}: events through every detector, end to end (sustained)",
             "value": f"{tp['processed_events_per_s']:.0f} events/s",
             "detail": f"{tp['processed_pairs_per_s']:.0f} pairs/s; goal 2,000 events/s; "
                       f"dropped {tp.get('dropped', 0)}; load average {tp['load_before']} → {tp['load_after']}"},
            {"measure": f"{method}: CPU per event, HTTP process / detector worker",
             "value": f"{tp['cpu_us_per_event']['http']:.0f} / {tp['cpu_us_per_event']['worker']:.0f} µs",
             "detail": f"one core each sustains {tp['capacity_events_per_s']:.0f} events/s "
                       f"(the slower of the two); detector steps for {tp['pairs']} pairs: "
                       + ", ".join(f"{k} {v}" for k, v in tp["detector_steps"].items())},
        ]  # fmt: skip
    return rows


NAMES = ("mmd", "cvm", "fet", "prediction", "error_rate", "predicted_class")


def delay_markdown(table: list[dict]) -> str:
    if not table:
        return ""
    rows = [{"method": r["method"], "ERT (steps)": r["ert"], "scenario": r["scenario"],
             **{k: str(r.get(k, "–")) for k in NAMES}} for r in table]  # fmt: skip
    return (
        "Detection delay versus ERT (drifted instances read until the alarm; 100 stationary rows "
        "first, default sub-sampling; `None` = no alarm after the onset within the drifted rows):"
        "\n\n" + markdown_table(rows)
    )


def run_length_markdown(rows: list[dict]) -> str:
    table = [{"method": r.get("method", "cusum"), "stream": r["stream"], "ERT": r["ert"],
              "reference draws": r["draws"], "runs per detector": r["runs"],
              **{k: f"{r[k]:.2f}" if k in r else "–" for k in NAMES}}
             for r in rows]  # fmt: skip
    return (
        "Stationary run length over the ERT (one step per instance; goal 0.8-1.2; 400 runs "
        "give a 95 % interval of about ±10 %; `–`: not run in that row). The fraud stream's "
        "reference and stream hold whole account profiles, and `cvm` reads each profile once "
        "under cusum:\n\n" + markdown_table(table)
    )


def render(result: dict, command: str) -> dict:
    """The section for ``kubeloop.bench``: title, table, command, notes."""
    tp = result["throughput"]["cusum"]
    notes = [
        "One machine, 2 cores shared by the HTTP client, the service's HTTP process and its "
        "detector worker process (and by whatever else runs there: see the load average). "
        f"Default detector settings (ERT {tp['settings']['ert']:g} steps, MMD one instance in "
        f"{tp['settings']['mmd_every']}, CVM/FET/prediction one in {tp['settings']['univariate_every']}). "
        "Arming is timed from `POST /v1/watch` to `armed` (the reference read included); the "
        "detail is each detector's own set-up.",
    ]
    if not result["throughput"]["alibi"]["cold"]:
        notes.append(
            "The alibi first-watch set-up above reused a threshold cache (`--work`); the cold row "
            "is from the run that filled that cache. A cold alibi set-up takes minutes, most of it "
            "the FET calibration (its null-stream count grows with the ERT and the columns)."
        )
    if result.get("run_lengths"):
        notes += ["", run_length_markdown(result["run_lengths"])]
    if d := delay_markdown(result["delays"]):
        notes += ["", d]
    return {
        "title": "Drift service (bench/drift)",
        "table": table_rows(result),
        "command": command,
        "notes": "\n".join(notes),
    }


def run() -> dict:
    """``kubeloop.bench`` entry; ``KUBELOOP_BENCH_DRIFT_WORK``/``_PAIRS``/``_ERTS`` adjust it."""
    env = os.environ
    work = Path(env["KUBELOOP_BENCH_DRIFT_WORK"]) if env.get("KUBELOOP_BENCH_DRIFT_WORK") else None
    pairs = int(env.get("KUBELOOP_BENCH_DRIFT_PAIRS", "20000"))
    erts = [int(e) for e in env.get("KUBELOOP_BENCH_DRIFT_ERTS", "100,500").split(",") if e]
    result = measure(work, pairs, 16, erts)
    _save(result)
    prefix = " ".join(
        f"{k}={v}" for k, v in (("KUBELOOP_BENCH_DRIFT_WORK", work), ("KUBELOOP_BENCH_DRIFT_PAIRS", pairs),
                                ("KUBELOOP_BENCH_DRIFT_ERTS", ",".join(map(str, erts)))) if v
    )  # fmt: skip
    return render(result, f"{prefix} .venv/bin/python -m kubeloop.bench --only drift".strip())


def _save(result: dict, out: Path = REPO_ROOT / "bench" / "results" / "drift.json") -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=20000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--erts", default="100,500", help="ERTs of the delay table ('' skips it)")
    p.add_argument(
        "--work", type=Path, help="keep the registry and threshold cache here (reruns start warm)"
    )
    p.add_argument(
        "--write", action="store_true", help="rewrite the drift section of docs/benchmarks.md"
    )
    args = p.parse_args()
    erts = [int(e) for e in args.erts.split(",") if e]
    result = measure(args.work, args.pairs, args.concurrency, erts)
    _save(result)
    cmd = f".venv/bin/python bench/drift/bench_drift.py --pairs {args.pairs} --erts '{args.erts}'"
    if args.work:
        cmd += f" --work {args.work}"
    section = render(result, cmd)
    from kubeloop.bench.runner import OUTPUT, merge, render_section

    text = render_section("drift", section)
    print(text)
    if args.write:
        OUTPUT.write_text(merge(OUTPUT.read_text(), {"drift": text}))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
