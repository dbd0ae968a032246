"""Serving benchmark: throughput and p50/p99 latency with wrk at concurrency 1, 8 and 32.

(a) a plain ``kserve.Model`` doing the same forward pass (and ``a-bundle``, the same on
a pandas DataFrame through ``ModelBundle.predict``); (b) kubeloop's predictor with
validation, metrics and payload logging to a real receiver; (b-feast) the same predictor
answering entity-key requests (request features and the account) by looking the account
profile up in a real Feast online store (SQLite); (c) (b) behind the local router. Servers under test are pinned to CPU 0, the router, wrk and the event receiver
to CPU 1 (when ``taskset`` and two CPUs exist), so they do not steal each other's time.
The goal ((b) keeps 90% of (a)) is judged co-scheduled: (a) and (b) loaded at once on the
same CPU, with a second (a) as the control (see :func:`measure_coscheduled`).
Results go to ``bench/serving/results.json`` and the serving section of
``docs/benchmarks.md``.

    .venv/bin/python bench/serving/run.py [--duration 3 --rounds 9 --co-duration 4 --co-rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from kubeloop.local.ports import free_port  # noqa: E402
from kubeloop.local.servers import start_predictor, start_router  # noqa: E402
from kubeloop.local.supervisor import Supervisor  # noqa: E402
from kubeloop.local.wait import wait_until  # noqa: E402
from kubeloop.registry import ModelRegistry  # noqa: E402
from kubeloop.training.quick import publish_quick_version  # noqa: E402

MODEL = "fraud-detector"
BODY = {
    "instances": [
        {
            "account_id": 1001,
            "amount": 120.0,
            "merchant_category": "online",
            "hour": 22,
            "distance_from_home_km": 30.0,
            "is_foreign": 0,
            "txn_count_1h": 2,
            "account_age_days": 400.0,
            "avg_amount_30d": 60.0,
            "txn_count_24h": 3.0,
        }
    ]
}
# What a caller knows: the request features and the account (the profile comes from Feast).
PROFILE = ("account_age_days", "avg_amount_30d", "txn_count_24h")
FEAST_BODY = {"instances": [{k: v for k, v in BODY["instances"][0].items() if k not in PROFILE}]}
FEAST_GOAL_MS = 2.0  # enrichment adds at most this to the predictor's p99 (concurrency 1)
CONCURRENCY = (1, 8, 32)
LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[%s]]
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('RESULT {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p99_us": %%d, '
    .. '"errors": %%d, "non2xx": %%d}\\n', summary.requests, summary.duration, latency:percentile(50),
    latency:percentile(99), e.connect + e.read + e.write + e.timeout, e.status))
end
"""


def _pin(cpu: int) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", str(cpu)]
    return []


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def wrk(
    url: str, concurrency: int, duration: int, script: Path, pids: dict[str, int] | None = None
) -> dict:
    pids = pids or {}
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    cmd = [
        *_pin(1),
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{duration}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    match = re.search(r"RESULT (\{.*\})", out)
    if not match:
        raise RuntimeError(f"wrk printed no result: {out}")
    r = json.loads(match.group(1))
    cpu = {f"cpu_ms_per_req_{name}": (cpu_seconds(pid) - before[name]) * 1000 / max(r["requests"], 1)
           for name, pid in pids.items()}  # fmt: skip
    return {
        **cpu,
        "concurrency": concurrency,
        "rps": r["requests"] / (r["duration_us"] / 1e6),
        "p50_ms": r["p50_us"] / 1000,
        "p99_ms": r["p99_us"] / 1000,
        "errors": r["errors"] + r["non2xx"],
    }


def _median_row(name: str, rows: list[dict]) -> dict:
    keys = [k for k in rows[0] if k != "concurrency"]
    out = {"config": name, "concurrency": rows[0]["concurrency"], "rounds": len(rows)}
    for k in keys:
        out[k] = statistics.median(r[k] for r in rows)
    return out


def measure_interleaved(
    targets: dict[str, tuple[str, dict[str, int]]],
    duration: int,
    rounds: int,
    script: Path,
    scripts: dict[str, Path] | None = None,
) -> tuple[list[dict], list[dict]]:
    """For each concurrency, runs every config in turn, ``rounds`` times; keeps medians.

    Interleaving spreads slow phases of a shared machine over all configs alike, and the
    order rotates every round so no config always runs right after another. Besides the
    medians, each round's (b)/(a) ratios are kept: a pair measured seconds apart shares
    the machine's load, so the median of the paired ratios is the steadiest comparison.
    """
    scripts = scripts or {}
    for name, (url, _) in targets.items():
        wrk(url, 8, 2, scripts.get(name, script))  # warm-up
    results, paired = [], []
    names = list(targets)
    for c in CONCURRENCY:
        samples: dict[str, list[dict]] = {name: [] for name in targets}
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                url, pids = targets[name]
                samples[name].append(wrk(url, c, duration, scripts.get(name, script), pids))
        for name in targets:
            row = _median_row(name, samples[name])
            cpu = " ".join(
                f"{k.removeprefix('cpu_ms_per_req_')} {v:.2f}"
                for k, v in row.items()
                if k.startswith("cpu_ms")
            )
            print(f"{name:>10} c={c:<3} {row['rps']:8.0f} req/s  p50 {row['p50_ms']:.2f} ms  p99 {row['p99_ms']:.2f} ms  "
                  f"cpu ms/req {cpu}", flush=True)  # fmt: skip
            results.append(row)
        a, b = samples["a-plain"], samples["b-kubeloop"]
        rps = [y["rps"] / x["rps"] for x, y in zip(a, b, strict=True)]
        cpu = [x["cpu_ms_per_req_server"] / y["cpu_ms_per_req_server"] for x, y in zip(a, b, strict=True)]  # fmt: skip
        row = {
            "concurrency": c,
            "rps_ratios": rps,
            "cpu_ratios": cpu,
            "rps_ratio": statistics.median(rps),
            "cpu_ratio": statistics.median(cpu),
        }
        if "a-plain-2" in samples:  # a second (a): what separately timed runs can tell apart
            ctl = samples["a-plain-2"]
            row["control_rps_ratios"] = [y["rps"] / x["rps"] for x, y in zip(a, ctl, strict=True)]
            row["control_rps_ratio"] = statistics.median(row["control_rps_ratios"])
            row["control_cpu_ratio"] = statistics.median(
                x["cpu_ms_per_req_server"] / y["cpu_ms_per_req_server"]
                for x, y in zip(a, ctl, strict=True)
            )
        if "b-feast" in samples:  # what the online lookup adds, round by round
            for q in ("p50", "p99"):
                row[f"feast_added_{q}_ms"] = statistics.median(
                    y[f"{q}_ms"] - x[f"{q}_ms"] for x, y in zip(b, samples["b-feast"], strict=True)
                )
        paired.append(row)
        print(f"  (b)/(a) c={c}: req/s {statistics.median(rps):.2f}, CPU capacity {statistics.median(cpu):.2f}", flush=True)  # fmt: skip
    return results, paired


def _load_into(
    res: dict, key: str, url: str, pid: int, c: int, duration: int, script: Path
) -> None:
    res[key] = wrk(url, c, duration, script, {"server": pid})


def measure_coscheduled(
    base: tuple[str, int],
    pairs: dict[str, tuple[str, int]],
    duration: int,
    rounds: int,
    script: Path,
) -> list[dict]:
    """(x)/(a) measured with both servers loaded at once on the same CPU.

    Two wrk processes drive ``base`` and one other server simultaneously; both servers
    are pinned to CPU 0 and busy, so the kernel shares that CPU between them and every
    slow or fast phase of the machine hits both alike. The ratio of their req/s (and of
    their CPU per request) is then the ratio of their capacities, free of the drift that
    makes separately timed runs of identical servers differ by tens of percent. A second
    instance of (a) as ``x`` measures the method's own noise.
    """
    rows = []
    for c in CONCURRENCY:
        for name, target in pairs.items():
            rps, cpu = [], []
            for _ in range(rounds):
                res: dict[str, dict] = {}
                threads = [
                    threading.Thread(
                        target=_load_into, args=(res, key, url, pid, c, duration, script)
                    )
                    for key, (url, pid) in (("a", base), ("x", target))
                ]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                a, x = res["a"], res["x"]
                rps.append(x["rps"] / a["rps"])
                cpu.append(a["cpu_ms_per_req_server"] / x["cpu_ms_per_req_server"])
            row = {
                "config": name,
                "concurrency": c,
                "rps_ratio": statistics.median(rps),
                "cpu_ratio": statistics.median(cpu),
                "rps_ratios": rps,
                "cpu_ratios": cpu,
            }
            rows.append(row)
            print(f"  co-scheduled {name}/(a) c={c}: req/s {row['rps_ratio']:.3f} ({min(rps):.3f}–{max(rps):.3f}), "
                  f"CPU capacity {row['cpu_ratio']:.3f} ({min(cpu):.3f}–{max(cpu):.3f})", flush=True)  # fmt: skip
    return rows


def run(duration: int, rounds: int, co_duration: int = 4, co_rounds: int = 5) -> dict:
    if not shutil.which("wrk"):
        raise SystemExit("wrk not found: run `make bench-serving-deps` (apt-get install wrk)")
    with tempfile.TemporaryDirectory(prefix="kubeloop-bench-") as tmp:
        tmp = Path(tmp)
        registry = ModelRegistry(str(tmp / "registry"))
        publish_quick_version(registry, MODEL, seed=1)
        _, folder = registry.download(MODEL, "v1", tmp / "v1")
        script = tmp / "post.lua"
        script.write_text(LUA % json.dumps(BODY))
        feast_script = tmp / "post-entity.lua"
        feast_script.write_text(LUA % json.dumps(FEAST_BODY))
        feast_store = _feast_store(tmp / "feast", FEAST_BODY["instances"][0]["account_id"])
        sink_port = free_port()
        # Stopped on the way out, before the folder goes.
        with Supervisor(tmp / "runtime") as sup:
            sup.start("sink", ["-m", "tests.support.sink", "--port", str(sink_port)],
                      launcher=_pin(1))  # fmt: skip
            plain_procs = {}
            for name, extra in (
                ("a-plain", []),
                ("a-plain-2", []),
                ("a-bundle", ["--dataframe"]),
                ("a-edge", ["--edge"]),
            ):
                port = free_port()
                plain_procs[name] = sup.start(
                    name,
                    [str(ROOT / "bench/serving/plain_model.py"), "--model_name", MODEL, "--model-dir", str(folder),
                     "--http_port", str(port), "--grpc_port", str(free_port()), "--configure_logging", "false", *extra],
                    health_url=f"http://127.0.0.1:{port}/v1/models/{MODEL}",
                    ports={"http": port},
                    launcher=_pin(0),
                )  # fmt: skip
            # Pinned from the start, as the baselines: torch sizes its thread pool for
            # the CPUs it sees when imported.
            predictor = start_predictor(
                sup,
                MODEL,
                "v1",
                registry.uri,
                logger_url=f"http://127.0.0.1:{sink_port}/",
                wait=False,
                launcher=_pin(0),
            )
            enriching = start_predictor(
                sup, MODEL, "v1", registry.uri, logger_url=f"http://127.0.0.1:{sink_port}/",
                feast_repo=feast_store, name="predictor-feast", wait=False, launcher=_pin(0),
            )  # fmt: skip
            split = tmp / "split.json"
            split.write_text(
                json.dumps({"model": MODEL, "stable": {"version": "v1", "url": predictor.url}})
            )
            router = start_router(sup, split, wait=False, launcher=_pin(1))
            for server in (*plain_procs.values(), predictor, enriching, router):
                server.wait_healthy()
            answer = httpx.post(enriching.url + f"/v1/models/{MODEL}:predict", json=FEAST_BODY)
            assert answer.status_code == 200, answer.text
            wait_until(
                lambda: httpx.get(f"{router.url}/readyz").status_code == 200,
                timeout=30,
                what="the router to read its split",
            )
            assert (
                httpx.post(f"{router.url}/v1/models/{MODEL}:predict", json=BODY).status_code == 200
            )
            path = f"/v1/models/{MODEL}:predict"
            targets = {
                **{
                    name: (plain.url + path, {"server": plain.pid})
                    for name, plain in plain_procs.items()
                },
                "b-kubeloop": (predictor.url + path, {"server": predictor.pid}),
                "b-feast": (enriching.url + path, {"server": enriching.pid}),
                "c-router": (router.url + path, {"server": predictor.pid, "router": router.pid}),
            }
            load_before = os.getloadavg()
            control = targets["a-plain-2"]
            results, paired = measure_interleaved(
                targets, duration, rounds, script, {"b-feast": feast_script}
            )
            coscheduled = measure_coscheduled(
                (targets["a-plain"][0], targets["a-plain"][1]["server"]),
                {
                    "a-plain-2": (control[0], control[1]["server"]),
                    "a-edge": (targets["a-edge"][0], targets["a-edge"][1]["server"]),
                    "b-kubeloop": (targets["b-kubeloop"][0], predictor.pid),
                },
                co_duration,
                co_rounds,
                script,
            )
            load_after = os.getloadavg()
            served = _samples(httpx.get(f"{predictor.url}/metrics").text)
            events = {
                outcome: sum(
                    v for name, labels, v in served
                    if name == "kubeloop_payload_events_total" and labels.get("outcome") == outcome
                )
                for outcome in ("sent", "dropped")
            }  # fmt: skip
            enriched = _samples(httpx.get(f"{enriching.url}/metrics").text)
            count, total = (
                sum(v for name, _, v in enriched if name == f"kubeloop_feast_lookup_seconds_{k}")
                for k in ("count", "sum")
            )  # fmt: skip
            lookup = {"count": count, "mean_ms": 1000 * total / max(count, 1)}
    return {
        "feast_lookup": lookup,
        "results": results,
        "paired": paired,
        "coscheduled": coscheduled,
        "co_duration_s": co_duration,
        "co_rounds": co_rounds,
        "payload_events": events,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "load_average": {"before": load_before, "after": load_after},
        "duration_s": duration,
        "rounds": rounds,
        "pinned": bool(_pin(0)),
    }


def _feast_store(folder: Path, account: int) -> Path:
    """A real Feast repository (SQLite online store) holding ``account`` among 800."""
    from kubeloop.data import fraud
    from kubeloop.features.store import prepare_feature_store

    data = fraud.generate("stationary", days=3, n_accounts=800, seed=1)
    if account not in set(data.accounts["account_id"]):
        raise SystemExit(f"the bench's account {account} is not among the generated accounts")
    prepare_feature_store(folder, data.accounts)
    return folder


def _samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of a ``/metrics`` page, parsed by prometheus-client: (name, labels, value)."""
    from prometheus_client.parser import text_string_to_metric_families

    return [
        (s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples
    ]


GOAL = 0.90  # (b) keeps at least this share of (a)'s throughput


def render(report: dict, command: str) -> str:
    rows = {(r["config"], r["concurrency"]): r for r in report["results"]}
    paired = {p["concurrency"]: p for p in report["paired"]}
    load = report["load_average"]
    speedup = statistics.median(
        rows[("a-bundle", c)]["cpu_ms_per_req_server"]
        / rows[("a-plain", c)]["cpu_ms_per_req_server"]
        for c in CONCURRENCY
    )
    lines = [
        "## Serving",
        "",
        f"Command: `{command}` ({report['machine']}; load average (1 min) {load['before'][0]:.1f} before "
        f"and {load['after'][0]:.1f} after, from other work on the shared machine; wrk, {report['duration_s']} s "
        f"per run, {report['rounds']} interleaved rounds in rotating order, medians; one V1 instance per "
        f"request; {'servers on CPU 0, router/wrk/receiver on CPU 1' if report['pinned'] else 'no CPU pinning'}).",
        "",
        "Configs: (a) `a-plain`, a plain `kserve.Model` running the same forward pass as the "
        "predictor (`kubeloop.serving.forward.Forward`: rows to numpy, then the network) with no "
        "validation, metrics or payload logging, served with the predictor's server settings (REST and "
        "gRPC, kserve's defaults); `a-bundle`, the same plain model calling "
        "`ModelBundle.predict` on a pandas DataFrame (what the predictor did before); `a-plain-2`, a "
        "second instance of (a), the control; `a-edge`, (a) behind kubeloop's REST edge (body, header "
        "and media-type checks, outcome routing, and V1 predict answered by the edge itself: kserve's V1 "
        "route without FastAPI's router, request object and dependency solving, see "
        "`kubeloop.serving.rest`), so that (b)/(a-edge) is what validation, metrics and payload events "
        "cost; (b) `b-kubeloop`, the predictor (behind the same edge) with schema validation, "
        "`kubeloop_*` metrics and payload events to a real receiver; (c) `c-router`, (b) behind the local router. CPU ms/req is "
        "the server process's user+system CPU time over the requests wrk completed.",
        "",
        "The predictor's request path: V1 predict answered by the REST edge itself (kserve's V1 route "
        "without FastAPI's router, request object and dependency solving, which cost more CPU per "
        "request than everything below together: compare `a-edge` with `a-plain`), "
        "validation in one C-level pass per column (per value for one or "
        "two rows; row by row only to name a problem), the numpy forward pass instead of a per-request "
        f"DataFrame ({speedup:.1f}× less server CPU per request: `a-plain` against `a-bundle`, median over "
        "the concurrencies), metric children resolved once at load, "
        "request ids from a per-process prefix and counter, payload events queued as raw objects in a "
        "bounded deque and JSON-encoded by the sender task in batches (20 ms linger; both events of a pair "
        "formatted in one operation; the receiver's pipelined answers counted straight from the socket's "
        "bytes in one callback, no stream reader or coroutine per answer), no per-request logging. Shared "
        "by every config through kubeloop's server class, baselines included: fastapi's per-request "
        "deprecation warning silenced, and the startup heap frozen after load (`gc.freeze()`: a full "
        "collection of the ~300k import-time objects costs ~160 ms and, under load, happens every few "
        "seconds). Every server is pinned from its start, so torch sizes its thread pool alike.",
        "",
        "| config | concurrency | req/s | p50 ms | p99 ms | errors | predictor CPU ms/req | router CPU ms/req |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["results"]:
        router_cpu = f"{r['cpu_ms_per_req_router']:.2f}" if "cpu_ms_per_req_router" in r else "–"
        lines.append(
            f"| {r['config']} | {r['concurrency']} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
            f"| {r['errors']} | {r['cpu_ms_per_req_server']:.2f} | {router_cpu} |"
        )
    lines += [
        "",
        "| concurrency | (b)/(a) req/s, median of paired rounds | (b)/(a) CPU capacity (a CPU/req ÷ b CPU/req), "
        "median of paired rounds | (b)/(a) req/s, ratio of medians | (b)/(a-bundle) req/s "
        "| router p50 overhead (c)−(b) ms | router CPU ms/req | control (a′)/(a) req/s, CPU capacity, paired medians |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in CONCURRENCY:
        a, b, cc = rows[("a-plain", c)], rows[("b-kubeloop", c)], rows[("c-router", c)]
        bundle, p = rows[("a-bundle", c)], paired[c]
        lines.append(
            f"| {c} | {p['rps_ratio']:.2f} | {p['cpu_ratio']:.2f} | {b['rps'] / a['rps']:.2f} "
            f"| {b['rps'] / bundle['rps']:.2f} | {cc['p50_ms'] - b['p50_ms']:+.2f} | {cc['cpu_ms_per_req_router']:.2f} "
            f"| {_control(p)} |"
        )
    co = {(r["config"], r["concurrency"]): r for r in report["coscheduled"]}
    lines += [
        "",
        f"Co-scheduled (both servers loaded at once, pinned to the same CPU, {report['co_rounds']} rounds of "
        f"{report['co_duration_s']} s per point; medians with the range over rounds). The control row is a "
        "second instance of (a): it shows what the method itself can tell apart.",
        "",
        "| concurrency | control (a′)/(a) req/s | control CPU capacity | (a-edge)/(a) req/s "
        "| (b)/(a) req/s | (b)/(a) CPU capacity | (b)/(a-edge) req/s, validation, metrics and payload events |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def cell(row: dict, key: str) -> str:
        values = row[key + "s"]
        return f"{row[key]:.3f} ({min(values):.3f}–{max(values):.3f})"

    met = []
    for c in CONCURRENCY:
        ctl, b, edge = co[("a-plain-2", c)], co[("b-kubeloop", c)], co[("a-edge", c)]
        met.append(b["rps_ratio"] >= GOAL and b["cpu_ratio"] >= GOAL)
        lines.append(
            f"| {c} | {cell(ctl, 'rps_ratio')} | {cell(ctl, 'cpu_ratio')} | {cell(edge, 'rps_ratio')} "
            f"| {cell(b, 'rps_ratio')} | {cell(b, 'cpu_ratio')} | {b['rps_ratio'] / edge['rps_ratio']:.3f} |"
        )
    lines += _feast_lines(report, rows, paired)
    ev = report["payload_events"]
    verdict = (
        f"met: at concurrency {', '.join(map(str, CONCURRENCY))} both co-scheduled medians are ≥ {GOAL:.2f}."
        if all(met)
        else "not met at concurrency "
        + ", ".join(str(c) for c, ok in zip(CONCURRENCY, met, strict=True) if not ok)
        + f" (a co-scheduled median below {GOAL:.2f}); see the numbers above."
    )
    lines += [
        "",
        f"Payload events during (b) and (c): {ev['sent']:.0f} sent, {ev['dropped']:.0f} dropped.",
        f"Goal: (b) keeps ≥ {GOAL:.2f} × (a)'s throughput, judged on the co-scheduled medians of req/s and "
        f"of CPU capacity — {verdict} Timed separately, the paired medians of (b)/(a) are "
        f"{min(paired[c]['rps_ratio'] for c in CONCURRENCY):.2f}–{max(paired[c]['rps_ratio'] for c in CONCURRENCY):.2f} "
        f"(req/s) and {min(paired[c]['cpu_ratio'] for c in CONCURRENCY):.2f}–{max(paired[c]['cpu_ratio'] for c in CONCURRENCY):.2f} "
        "(CPU capacity), with the control's own rounds spread as shown. The router's goal, ≤ 1 ms added at p50 at concurrency 1: "
        f"{rows[('c-router', 1)]['p50_ms'] - rows[('b-kubeloop', 1)]['p50_ms']:+.2f} ms.",
        "Reading: timed one after another, wrk's req/s on this shared 2-CPU machine swings by tens of "
        "percent between runs seconds apart (the machine's speed drifts), so the paired medians of the "
        "separate runs above can land several points either side of the truth; loading both servers at "
        "once cancels that drift, as the control row shows, and is what the goal is judged on.",
    ]
    return "\n".join(lines) + "\n"


def _feast_lines(report: dict, rows: dict, paired: dict) -> list[str]:
    if not any("feast_added_p99_ms" in paired[c] for c in CONCURRENCY):
        return []
    lookup = report.get("feast_lookup", {})
    added = paired[1]["feast_added_p99_ms"]
    verdict = "met" if added <= FEAST_GOAL_MS else "not met"
    lines = [
        "",
        "Online enrichment: (b-feast) is (b) answering entity-key requests (the request features and "
        "`account_id`), the account profile looked up in a real Feast online store (SQLite, 800 "
        "accounts) with one read per request through the online store's own `online_read` (the "
        "feature service's views resolved once, at load: `kubeloop.features.online`). Added "
        "latency is (b-feast) − (b), the median over the interleaved rounds of each round's difference.",
        "",
        "| concurrency | (b) p50 / p99 ms | (b-feast) p50 / p99 ms | added p50 ms | added p99 ms | (b-feast)/(b) req/s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in CONCURRENCY:
        b, f, p = rows[("b-kubeloop", c)], rows[("b-feast", c)], paired[c]
        lines.append(
            f"| {c} | {b['p50_ms']:.2f} / {b['p99_ms']:.2f} | {f['p50_ms']:.2f} / {f['p99_ms']:.2f} "
            f"| {p['feast_added_p50_ms']:+.2f} | {p['feast_added_p99_ms']:+.2f} | {f['rps'] / b['rps']:.2f} |"
        )
    lines += [
        "",
        f"The lookup as the predictor times it (`kubeloop_feast_lookup_seconds`, over every round "
        f"and concurrency): {lookup.get('count', 0):.0f} lookups, "
        f"mean {lookup.get('mean_ms', float('nan')):.2f} ms. Goal: enrichment adds ≤ {FEAST_GOAL_MS:.0f} ms "
        f"to the p99 at concurrency 1: {added:+.2f} ms, {verdict}. The SQLite store is read on the "
        "event loop (a network store, Redis, in a worker thread): with the lookup in a worker thread "
        "the same bench measured +1.11 / +8.6 / +16.5 ms p99 at concurrency 1 / 8 / 32 (2026-12-03, "
        "before the change). At higher concurrency the added time queues behind the single event "
        "loop on one CPU.",
    ]
    return lines


def _control(paired_row: dict) -> str:
    if "control_rps_ratio" not in paired_row:
        return "–"
    ratios = paired_row["control_rps_ratios"]
    return (
        f"{paired_row['control_rps_ratio']:.2f} (rounds {min(ratios):.2f}–{max(ratios):.2f}), "
        f"{paired_row['control_cpu_ratio']:.2f}"
    )


def update_docs(section: str, path: Path = ROOT / "docs" / "benchmarks.md") -> None:
    begin, end = "<!-- serving:begin -->", "<!-- serving:end -->"
    text = path.read_text() if path.exists() else "# kubeloop benchmarks\n"
    block = f"{begin}\n{section}{end}\n"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) + 1 :]
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=3, help="seconds per measurement")
    parser.add_argument(
        "--rounds", type=int, default=7, help="interleaved rounds per point (medians kept)"
    )
    parser.add_argument(
        "--co-duration", type=int, default=4, help="seconds per co-scheduled measurement"
    )
    parser.add_argument("--co-rounds", type=int, default=5, help="co-scheduled rounds per point")
    parser.add_argument("--no-docs", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="rewrite the docs section from bench/serving/results.json without measuring",
    )
    args = parser.parse_args()
    results = ROOT / "bench/serving/results.json"
    if args.render_only:
        report = json.loads(results.read_text())
    else:
        report = run(args.duration, args.rounds, args.co_duration, args.co_rounds)
        results.write_text(json.dumps(report, indent=2) + "\n")
    section = render(
        report,
        f".venv/bin/python bench/serving/run.py --duration {report['duration_s']} --rounds {report['rounds']} "
        f"--co-duration {report['co_duration_s']} --co-rounds {report['co_rounds']}",
    )
    print(section)
    if not args.no_docs:
        update_docs(section)


if __name__ == "__main__":
    main()
