"""Serving benchmark: throughput and p50/p99 latency with wrk at concurrency 1, 8 and 32.

(a) a plain ``kserve.Model`` doing the same forward pass (and ``a-bundle``, the same on
a pandas DataFrame through ``ModelBundle.predict``); (b) kubeloop's predictor with
validation, metrics and payload logging to a real receiver; (c) (b) behind the local
router. Servers under test are pinned to CPU 0, the router, wrk and the event receiver
to CPU 1 (when ``taskset`` and two CPUs exist), so they do not steal each other's time.
Results go to ``bench/serving/results.json`` and the serving section of
``docs/benchmarks.md``.

    .venv/bin/python bench/serving/run.py [--duration 5]
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
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from kubeloop.registry import ModelRegistry  # noqa: E402
from kubeloop.serving.processes import ServerProcess, free_port, start_predictor, start_router  # noqa: E402
from kubeloop.testing import make_registry_version  # noqa: E402

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
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
    targets: dict[str, tuple[str, dict[str, int]]], duration: int, rounds: int, script: Path
) -> tuple[list[dict], list[dict]]:
    """For each concurrency, runs every config in turn, ``rounds`` times; keeps medians.

    Interleaving spreads slow phases of a shared machine over all configs alike, and the
    order rotates every round so no config always runs right after another. Besides the
    medians, each round's (b)/(a) ratios are kept: a pair measured seconds apart shares
    the machine's load, so the median of the paired ratios is the steadiest comparison.
    """
    for url, _ in targets.values():
        wrk(url, 8, 2, script)  # warm-up
    results, paired = [], []
    names = list(targets)
    for c in CONCURRENCY:
        samples: dict[str, list[dict]] = {name: [] for name in targets}
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                url, pids = targets[name]
                samples[name].append(wrk(url, c, duration, script, pids))
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
        paired.append(
            {
                "concurrency": c,
                "rps_ratios": rps,
                "cpu_ratios": cpu,
                "rps_ratio": statistics.median(rps),
                "cpu_ratio": statistics.median(cpu),
            }
        )
        print(f"  (b)/(a) c={c}: req/s {statistics.median(rps):.2f}, CPU capacity {statistics.median(cpu):.2f}", flush=True)  # fmt: skip
    return results, paired


def _spawn(args: list[str], log: Path, cpu: int) -> subprocess.Popen:
    with open(log, "ab") as f:
        return subprocess.Popen(
            [*_pin(cpu), sys.executable, *args], stdout=f, stderr=subprocess.STDOUT
        )


def run(duration: int, rounds: int) -> dict:
    if not shutil.which("wrk"):
        raise SystemExit("wrk not found: run `make bench-serving-deps` (apt-get install wrk)")
    with tempfile.TemporaryDirectory(prefix="kubeloop-bench-") as tmp:
        tmp = Path(tmp)
        registry = ModelRegistry(str(tmp / "registry"))
        make_registry_version(registry, MODEL, seed=1)
        _, folder = registry.download(MODEL, "v1", tmp / "v1")
        script = tmp / "post.lua"
        script.write_text(LUA % json.dumps(BODY))
        sink_port = free_port()
        sink = _spawn(
            ["-m", "kubeloop.serving.sink", "--port", str(sink_port)], tmp / "sink.log", 1
        )
        procs: list[ServerProcess] = []
        try:
            plain_procs = {}
            for name, extra in (("a-plain", []), ("a-bundle", ["--dataframe"])):
                port = free_port()
                log = tmp / f"{name}.log"
                proc = _spawn(
                    [str(ROOT / "bench/serving/plain_model.py"), "--model_name", MODEL, "--model-dir", str(folder),
                     "--http_port", str(port), "--grpc_port", str(free_port()), "--configure_logging", "false", *extra],
                    log, 0,
                )  # fmt: skip
                plain_procs[name] = ServerProcess(name, proc, f"http://127.0.0.1:{port}", log)
                procs.append(plain_procs[name])
            # Pinned from the start, as the baselines: torch sizes its thread pool for
            # the CPUs it sees when imported.
            predictor = start_predictor(
                MODEL,
                "v1",
                registry.uri,
                tmp,
                logger_url=f"http://127.0.0.1:{sink_port}/",
                wait=False,
                launcher=_pin(0),
            )
            procs.append(predictor)
            split = tmp / "split.json"
            split.write_text(
                json.dumps({"model": MODEL, "stable": {"version": "v1", "url": predictor.url}})
            )
            router = start_router(split, tmp, wait=False, launcher=_pin(1))
            procs.append(router)
            for plain in plain_procs.values():
                plain.wait_ready(f"/v1/models/{MODEL}")
            predictor.wait_ready(f"/v1/models/{MODEL}")
            router.wait_ready("/readyz")
            assert (
                httpx.post(f"{router.url}/v1/models/{MODEL}:predict", json=BODY).status_code == 200
            )
            path = f"/v1/models/{MODEL}:predict"
            targets = {
                **{
                    name: (plain.url + path, {"server": plain.process.pid})
                    for name, plain in plain_procs.items()
                },
                "b-kubeloop": (predictor.url + path, {"server": predictor.process.pid}),
                "c-router": (
                    router.url + path,
                    {"server": predictor.process.pid, "router": router.process.pid},
                ),
            }
            load_before = os.getloadavg()
            results, paired = measure_interleaved(targets, duration, rounds, script)
            load_after = os.getloadavg()
            text = httpx.get(f"{predictor.url}/metrics").text
            events = {
                outcome: sum(
                    float(m.group(1))
                    for m in re.finditer(
                        rf'kubeloop_payload_events_total{{[^}}]*outcome="{outcome}"[^}}]*}} (\S+)',
                        text,
                    )
                )
                for outcome in ("sent", "dropped")
            }
        finally:
            for p in procs:
                p.stop()
            sink.terminate()
            sink.wait()
    return {
        "results": results,
        "paired": paired,
        "payload_events": events,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "load_average": {"before": load_before, "after": load_after},
        "duration_s": duration,
        "rounds": rounds,
        "pinned": bool(_pin(0)),
    }


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
        "`ModelBundle.predict` on a pandas DataFrame (what the predictor did before); (b) "
        "`b-kubeloop`, the predictor with schema validation, `kubeloop_*` metrics and payload "
        "events to a real receiver; (c) `c-router`, (b) behind the local router. CPU ms/req is "
        "the server process's user+system CPU time over the requests wrk completed.",
        "",
        "The predictor's request path: validation in one C-level pass per column (per value for one or "
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
        "| router p50 overhead (c)−(b) ms | router CPU ms/req |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    met = []
    for c in CONCURRENCY:
        a, b, cc = rows[("a-plain", c)], rows[("b-kubeloop", c)], rows[("c-router", c)]
        bundle, p = rows[("a-bundle", c)], paired[c]
        met.append(p["rps_ratio"] >= GOAL and p["cpu_ratio"] >= GOAL)
        lines.append(
            f"| {c} | {p['rps_ratio']:.2f} | {p['cpu_ratio']:.2f} | {b['rps'] / a['rps']:.2f} "
            f"| {b['rps'] / bundle['rps']:.2f} | {cc['p50_ms'] - b['p50_ms']:+.2f} | {cc['cpu_ms_per_req_router']:.2f} |"
        )
    ev = report["payload_events"]
    verdict = (
        f"met: at concurrency {', '.join(map(str, CONCURRENCY))} both paired medians are ≥ {GOAL:.2f}."
        if all(met)
        else "not met at concurrency "
        + ", ".join(str(c) for c, ok in zip(CONCURRENCY, met, strict=True) if not ok)
        + f" (a paired median below {GOAL:.2f}); see the numbers above."
    )
    lines += [
        "",
        f"Payload events during (b) and (c): {ev['sent']:.0f} sent, {ev['dropped']:.0f} dropped.",
        f"Goal: (b) keeps ≥ {GOAL:.2f} × (a)'s throughput, judged on the paired medians of req/s and of CPU "
        f"capacity — {verdict} The router's goal, ≤ 1 ms added at p50 at concurrency 1: "
        f"{rows[('c-router', 1)]['p50_ms'] - rows[('b-kubeloop', 1)]['p50_ms']:+.2f} ms.",
        "Reading: wrk's req/s on a shared 2-CPU machine swings by tens of percent between runs (other "
        "work takes CPU 0 at random moments), so single runs or ratios of separate medians can show "
        "either config ahead; CPU per request is the steadier measure of a single-process server's capacity.",
    ]
    return "\n".join(lines) + "\n"


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
        report = run(args.duration, args.rounds)
        results.write_text(json.dumps(report, indent=2) + "\n")
    section = render(
        report,
        f".venv/bin/python bench/serving/run.py --duration {report['duration_s']} --rounds {report['rounds']}",
    )
    print(section)
    if not args.no_docs:
        update_docs(section)


if __name__ == "__main__":
    main()
