"""Benchmark of the closed loop: the demo's figures over several seeds.

Runs ``kubeloop.loop.run_demo`` (v1 trained with plain torch so the runs measure the
loop, not the training pipeline) for each seed and records detection delay, update cycle
(drift onset → retrained version at 100 %), accuracy before / during / after, and the
worse candidate's time to rollback. Writes ``bench/results/loop.json`` and, with
``--write-docs``, the Loop section of ``docs/benchmarks.md``.

    .venv/bin/python bench/loop/run.py --seeds 0 1 --write-docs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from kubeloop.loop.config import LoopConfig
from kubeloop.loop.demo import run_demo

BEGIN, END = "<!-- loop:begin -->", "<!-- loop:end -->"


def _acc(summary: dict, key: str) -> str:
    value = (summary.get(key) or {}).get("accuracy")
    return f"{value:.3f}" if value is not None else "–"


def _s(value) -> str:
    return f"{value:.1f}" if value is not None else "–"


def markdown(results: dict, command: str) -> str:
    rows = []
    for run in results["runs"]:
        s = run["summary"]
        bad = s.get("bad_candidate") or {}
        rows.append(
            f"| {run['seed']} | {s['scenario']} | {_s(s.get('detection_delay_seconds'))} | "
            f"{_s(s.get('version_registered_seconds'))} | {_s(s.get('update_cycle_seconds'))} | "
            f"{_acc(s, 'accuracy_before_drift')} | {_acc(s, 'accuracy_during_drift')} | "
            f"{_acc(s, 'accuracy_after_promotion')} | "
            f"{'yes' if bad.get('rolled_back') else 'no'} | "
            f"{_s(bad.get('seconds_canary_to_rollback'))} | {bad.get('predictions_served', '–')} | "
            f"{run['wall_seconds']:.0f} |"
        )
    cycles = [r["summary"]["update_cycle_seconds"] for r in results["runs"]]
    done = [c for c in cycles if c is not None]
    median = f"{statistics.median(done):.1f} s" if done else "no completed cycle"
    return "\n".join(
        [
            BEGIN,
            "## Closed loop (`kubeloop demo`)",
            "",
            f"Command: `{command}` ({results['machine']}; v1 trained with plain torch, "
            f"{results['config']['rate']:g} transactions/s, scenario drift "
            f"{results['config']['onset_seconds']:g} s into the traffic, retraining on the "
            f"last {results['config']['data_window_seconds']} s of labelled traffic).",
            "",
            "| seed | scenario | detection delay s | registered s | update cycle s | accuracy before | "
            "during drift | after promotion | worse candidate rolled back | canary→rollback s | "
            "predictions it served | wall s |",
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
            *rows,
            "",
            f"Median update cycle (drift onset → retrained version at 100 % of traffic): {median}; "
            "goal ≤ 120 s. Times after the onset: detection, run submitted, version registered, "
            "then the canary analysis (which dominates).",
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--scenario", default="covariate")
    parser.add_argument("--duration", type=float, default=300.0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/loop.json"))
    parser.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    runs = []
    config = None
    for seed in args.seeds:
        config = LoopConfig(scenario=args.scenario, seed=seed, duration_seconds=args.duration,
                            v1_trainer="quick")  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="kubeloop-bench-loop-") as tmp:
            started = time.perf_counter()
            summary = run_demo(config, home=Path(tmp) / "demo", report_dir=Path(tmp) / "report",
                               echo=lambda line: print(line, flush=True))  # fmt: skip
            runs.append({"seed": seed, "summary": summary,
                         "wall_seconds": time.perf_counter() - started})  # fmt: skip
    results = {
        "machine": f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}",
        "config": config.to_dict(),
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    seeds = " ".join(str(s) for s in args.seeds)
    command = f".venv/bin/python bench/loop/run.py --seeds {seeds} --scenario {args.scenario} --write-docs"
    if args.write_docs:
        write_docs(markdown(results, command))
    print(markdown(results, command))


if __name__ == "__main__":
    main()
