"""Memory of a predictor forked from the stage server against one started cold.

The local runtime forks each predictor from its warm stage server (``kubeloop.local.stages
--service predictor``): the child shares the server's imported modules (torch, kserve,
Feast, pandas) copy-on-write instead of loading its own. This bench starts the same
registry version both ways, ``--predictors`` of each, sends each the same requests (each
with an account whose profile comes from Feast's online store, as the loop's callers do),
and reads every process's memory from ``/proc/<pid>/smaps_rollup`` (psutil):

- RSS: resident pages, shared ones counted in full;
- PSS: resident pages, each shared page divided among the processes sharing it (summed
  over processes it is the memory they take together);
- USS: the pages only this process holds, what it frees when it exits.

The stage server runs in the local runtime anyway (the pipeline's stages fork from it),
so what a forked predictor adds is its own USS and its share of the pages it keeps shared.

    .venv/bin/python -m kubeloop.bench --only predictor_memory
    .venv/bin/python bench/predictor_memory/bench_predictor_memory.py --predictors 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psutil

MODEL = "fraud-detector"
MB = 1024 * 1024
REQUEST = {"amount": 300.0, "merchant_category": "travel", "hour": 3,
           "distance_from_home_km": 90.0, "is_foreign": 1, "txn_count_1h": 3}  # fmt: skip
BATCH = 40  # rows per request, as the demo's callers send them


def _listener(port: int) -> psutil.Process:
    """The process listening on ``port`` (a forked predictor is the server's child, not the
    supervisor's thin client)."""
    for conn in psutil.net_connections("tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
            return psutil.Process(conn.pid)
    raise RuntimeError(f"nothing listens on port {port}")


def _memory(process: psutil.Process) -> dict[str, float]:
    info = process.memory_full_info()
    return {"RSS MB": info.rss / MB, "PSS MB": info.pss / MB, "USS MB": info.uss / MB}


def _serve(url: str, accounts: list[int], requests: int) -> None:
    with httpx.Client(timeout=30) as client:
        for i in range(requests):
            rows = [{**REQUEST, "account_id": accounts[(i * BATCH + j) % len(accounts)]}
                    for j in range(BATCH)]  # fmt: skip
            resp = client.post(f"{url}/v1/models/{MODEL}:predict", json={"instances": rows})
            resp.raise_for_status()


def measure(predictors: int = 2, requests: int = 200, echo=print) -> list[dict]:
    """One row per process: the stage server, the forked predictors, the cold ones."""
    from kubeloop.data import fraud
    from kubeloop.features.store import prepare_feature_store
    from kubeloop.local.servers import start_predictor
    from kubeloop.local.stages import wait_ready
    from kubeloop.local.supervisor import Supervisor
    from kubeloop.registry import ModelRegistry
    from kubeloop.training.quick import publish_quick_version

    with tempfile.TemporaryDirectory(prefix="kubeloop-bench-memory-") as tmp:
        root = Path(tmp)
        start = (datetime.now(UTC) - timedelta(days=2)).replace(hour=0, minute=0, second=0)
        data = fraud.generate("stationary", start=start, days=2, n_accounts=200, seed=4)
        prepare_feature_store(root / "store", data.accounts)
        accounts = sorted(int(a) for a in data.accounts["account_id"].unique())
        registry = ModelRegistry(str(root / "registry"))
        publish_quick_version(registry, MODEL, seed=4)
        sock = root / "stages.sock"
        rows = []
        with Supervisor(root / "runtime") as sup:
            server = sup.start("stages", ["-m", "kubeloop.local.stages", "--socket", str(sock)])
            wait_ready(sock, timeout=180)
            services = {}
            for kind in ("forked", "cold"):
                for i in range(predictors):
                    started = time.perf_counter()
                    services[f"{kind} predictor {i + 1}"] = service = start_predictor(
                        sup, MODEL, "v1", registry.uri, feast_repo=root / "store",
                        name=f"predictor-{kind}-{i + 1}",
                        stage_server=sock if kind == "forked" else None, timeout=180,
                    )  # fmt: skip
                    healthy = time.perf_counter() - started
                    _serve(service.url, accounts, requests)
                    echo(f"[memory] {kind} predictor {i + 1}: healthy in {healthy:.1f}s, "
                         f"{requests} requests of {BATCH} rows answered")  # fmt: skip
            processes = {"stage server": psutil.Process(server.pid)}
            for name, service in services.items():
                processes[name] = _listener(service.ports["http"])
            for name, process in processes.items():
                parent = "stage server" if process.ppid() == server.pid else "supervisor"
                rows.append({"process": name, "parent": parent, **_memory(process)})
        return rows


def _mean(rows: list[dict], prefix: str, key: str) -> float:
    return statistics.mean(r[key] for r in rows if r["process"].startswith(prefix))


def run(predictors: int = 2, requests: int = 200) -> dict:
    rows = measure(predictors, requests)
    server = next(r for r in rows if r["process"] == "stage server")
    forked_uss, cold_uss = _mean(rows, "forked", "USS MB"), _mean(rows, "cold", "USS MB")
    forked_pss = sum(r["PSS MB"] for r in rows if r["process"].startswith("forked"))
    cold_pss = sum(r["PSS MB"] for r in rows if r["process"].startswith("cold"))
    table = [{k: round(v, 1) if isinstance(v, float) else v for k, v in r.items()} for r in rows]
    notes = (
        f"{predictors} predictors of each kind, one registry version (v1 of a quick plain-torch "
        f"model), each answering {requests} requests of {BATCH} rows with the account "
        "profile looked up in Feast's online store (SQLite) before being measured, all at once "
        "on one machine. RSS counts shared pages in full; PSS divides each among its "
        "sharers, so PSS sums to the memory the processes take together; USS is what a "
        f"process alone holds. A forked predictor holds {forked_uss:.0f} MB of its own "
        f"(USS, mean), a cold one {cold_uss:.0f} MB: {forked_uss / cold_uss:.2f} of it. "
        f"Together the {predictors} forked predictors take {forked_pss:.0f} MB (PSS) beside "
        f"the stage server's {server['PSS MB']:.0f} MB (its share of the pages they still "
        f"share with it, RSS {server['RSS MB']:.0f} MB); the {predictors} cold ones take "
        f"{cold_pss:.0f} MB. The stage server runs in the local runtime anyway, for the "
        "pipeline's stages."
    )
    return {
        "title": "Predictor memory: forked from the stage server against cold",
        "table": table,
        "command": ".venv/bin/python -m kubeloop.bench --only predictor_memory",
        "notes": notes,
        "forked_uss_mb": forked_uss,
        "cold_uss_mb": cold_uss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predictors", type=int, default=2, help="predictors of each kind")
    parser.add_argument("--requests", type=int, default=200, help="requests to each")
    args = parser.parse_args()
    result = run(args.predictors, args.requests)
    print(json.dumps(result["table"], indent=1))
    print(result["notes"])


if __name__ == "__main__":
    main()
