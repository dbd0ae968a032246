"""How close one retraining window gets to the oracle: the retraining run alone, many seeds.

The loop bench measures the gap to the oracle once per seed, on a three-minute demo whose
window falls wherever detection put it. This bench takes the retraining out of the loop so
that many seeds fit in a few minutes. For each seed it:

1. builds the demo's traffic (``build_stream``: the same scenario, rate, onset and customers);
2. trains the demo's v1 with the training pipeline's stage functions one after another
   (``bench/pipeline``'s in-process run, into a scratch registry);
3. takes the window a retraining run learns from: ``rate × dataWindow`` labelled rows,
   starting ``WINDOW_START_S`` after the onset (detection and the first label);
4. runs the retraining run's stages on it the same way, against a copy of that registry:
   features with the replay from v1's reference sample (the scenario's replay fraction),
   Ray Train's ensemble as the loop's runs train it, evaluate, gate, register;
5. scores the candidate and the oracle (``bench/loop/oracle.py``) on the traffic after the
   window, as the loop bench scores them on the traffic after promotion.

Longer windows (``--windows``) show how much the gap owes to the window's size, and
distillation weights (``--distill``: none beside the demo's ``distillWeight`` by default)
what leaning the targets toward v1's scores changes, seed by seed.

    .venv/bin/python -m kubeloop.bench --only retrain_window
    .venv/bin/python bench/retrain_window/bench_retrain_window.py --seeds 0 1 2 --write-docs
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from kubeloop.demo.config import LoopConfig
from kubeloop.demo.run import MODEL

sys.path.insert(0, str(Path(__file__).parents[1] / "loop"))
sys.path.insert(0, str(Path(__file__).parents[1] / "pipeline"))
from bench_pipeline import in_one_process  # noqa: E402
from oracle import accuracy, train_oracle  # noqa: E402

WINDOW_START_S = 3.0  # onset → first row of the window in the loop (detection, labels)
TEST_SECONDS = 80.0  # traffic after the window that candidate and oracle are scored on
STREAM_SECONDS = 300.0
SEEDS = tuple(range(16))
# the loop's window (dataWindow) and longer ones: how much of the gap is the window's size
WINDOWS = (LoopConfig.data_window_seconds, 40, 80)
GOALS = {"covariate": 0.01, "concept": 0.02}  # the loop's goals for the gap to the oracle


def train_v1(config: LoopConfig, registry: str, home: Path) -> None:
    """The demo's v1 (``train_first_version``'s source and epochs), registered."""
    from kubeloop.training import TrainParams

    run = in_one_process(home, registry, MODEL, config.v1_source, TrainParams(epochs=3))
    if not run.registered:
        raise RuntimeError(f"v1 for seed {config.seed} did not pass its gate")


def traffic(config: LoopConfig) -> tuple[pd.DataFrame, int]:
    """The demo's replayed rows as labelled traffic (sent and labelled times at its rate)
    and the index of the first drifted row."""
    from kubeloop.demo.stream import build_stream

    stream = build_stream(
        config.scenario, rate=config.rate, onset_seconds=config.onset_seconds,
        duration_seconds=STREAM_SECONDS, seed=config.seed,
        n_accounts=config.stream_accounts, population_seed=config.v1_seed,
    )  # fmt: skip
    rows = pd.DataFrame(stream.instances)
    rows["is_fraud"] = stream.labels
    rows["account_id"] = stream.account_ids
    rows["transaction_id"] = stream.transaction_ids
    # batch rows per request, requests at rate / batch per second
    request = np.arange(len(rows)) // config.batch
    rows["sent_at"] = time.time() + request * config.batch / config.rate
    rows["labelled_at"] = rows["sent_at"] + config.label_delay_seconds
    return rows, stream.onset_index


def retrain(
    config: LoopConfig, window: pd.DataFrame, registry: str, home: Path, replay: float,
    distill: float,
):  # fmt: skip
    """A retraining run on ``window`` (every stage, into a copy of v1's registry, as the
    loop's run against v1): its candidate bundle."""
    from kubeloop.components.features.impl import ReplaySpec

    from kubeloop.demo.retrain_pipeline import window_dataset
    from kubeloop.training import TrainParams

    home.mkdir(parents=True)
    source = home / "window.parquet"
    window_dataset(window).to_parquet(source)
    own = shutil.copytree(registry, home / "registry")
    spec = (
        ReplaySpec(MODEL, "v1", replay, str(own), seed=config.seed + 1, distill=distill > 0)
        if replay or distill
        else None
    )
    params = TrainParams(
        epochs=config.pipeline_epochs, batch_size=config.pipeline_batch_size,
        members=config.pipeline_members, seed=config.seed + 1,  # the demo's run seed
        distill_weight=distill,
    )  # fmt: skip
    return in_one_process(home, str(own), MODEL, str(source), params, replay=spec).trained.bundle


def default_distills(scenario: str) -> tuple[float, ...]:
    """No distillation beside the demo's weight; concept drift alone: none (the operator
    sends none there)."""
    return (0.0,) if scenario == "concept" else (0.0, LoopConfig.distill_weight)


def run(
    seeds: tuple[int, ...] = SEEDS,
    scenario: str = "covariate",
    windows: tuple[int, ...] = WINDOWS,
    distills: tuple[float, ...] | None = None,
    replay: float | None = None,
) -> dict:
    distills = distills or default_distills(scenario)
    rows, gaps = [], {(w, d): [] for w in windows for d in distills}
    if replay is None:  # the demo's share for the scenario
        replay = (
            LoopConfig.concept_replay_fraction
            if scenario == "concept"
            else LoopConfig.replay_fraction
        )
    for seed in seeds:
        config = LoopConfig(scenario=scenario, seed=seed)
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="kubeloop-bench-window-") as tmp:
            work = Path(tmp)
            registry = str(work / "registry")
            train_v1(config, registry, work)
            stream, onset = traffic(config)
            first = onset + round(WINDOW_START_S * config.rate)
            test_from = first + round(max(windows) * config.rate)
            test = stream.iloc[test_from : test_from + round(TEST_SECONDS * config.rate)]
            oracle = train_oracle(
                scenario, seed=seed + 1000, n_accounts=config.stream_accounts,
                population_seed=config.v1_seed,
            )  # fmt: skip
            oracle_accuracy = accuracy(oracle, test)
            for seconds, distill in gaps:
                window = stream.iloc[first : first + round(seconds * config.rate)]
                home = work / f"w{seconds}-d{distill:g}"
                bundle = retrain(config, window, registry, home, replay, distill)
                candidate = accuracy(bundle, test)
                gaps[seconds, distill].append(oracle_accuracy - candidate)
                rows.append({
                    "seed": seed, "window (s)": seconds, "distill": distill,
                    "window rows": len(window),
                    "window frauds": int(window["is_fraud"].sum()),
                    "threshold": round(bundle.config.threshold, 3),
                    "candidate": round(candidate, 4), "oracle": round(oracle_accuracy, 4),
                    "gap to oracle": round(oracle_accuracy - candidate, 4),
                })  # fmt: skip
        print(f"[retrain_window] seed {seed}: {time.perf_counter() - started:.0f} s", flush=True)
    goal = GOALS.get(scenario)
    summary = "; ".join(
        f"{w} s window, distill {d:g}: gap mean {statistics.fmean(g):.4f}, max {max(g):.4f}"
        + (f", {sum(x > goal for x in g)} of {len(g)} seeds above {goal}" if goal else "")
        for (w, d), g in gaps.items()
    )
    if len(distills) > 1:  # each weight against none, seed by seed (same window, same v1)
        summary += "; " + "; ".join(
            f"distill {d:g} against none, {w} s window: mean change in the gap "
            f"{statistics.fmean(b - a for a, b in zip(gaps[w, 0.0], gaps[w, d], strict=True)):+.4f}"
            for w in windows
            for d in distills
            if d > 0 and (w, 0.0) in gaps
        )
    seeds_arg = " ".join(str(s) for s in seeds)
    windows_arg = " ".join(str(w) for w in windows)
    distills_arg = " ".join(f"{d:g}" for d in distills)
    return {
        "title": f"One retraining window against the oracle ({scenario}, offline)",
        "table": rows,
        "command": (
            f".venv/bin/python bench/retrain_window/bench_retrain_window.py --seeds {seeds_arg} "
            f"--scenario {scenario} --windows {windows_arg} --distill {distills_arg} --replay {replay:g} --write-docs"
        ),
        "notes": (
            f"{summary}. Each seed: the demo's traffic ({LoopConfig.rate:g} rows/s, "
            f"onset {LoopConfig.onset_seconds:g} s in), the demo's v1 (the pipeline's stage "
            "functions on its stationary data), a window of labelled rows from "
            f"{WINDOW_START_S:g} s after the onset, the retraining run's stages on it "
            f"({replay:.0%} of the training rows replayed from v1's reference sample, "
            "targets distilled toward v1's scores at the weight in the distill column "
            "(spec.retraining.distillWeight), "
            f"{LoopConfig.pipeline_members}-network ensemble, {LoopConfig.pipeline_epochs} "
            "epochs), candidate and oracle (bench/loop/oracle.py) scored on the "
            f"{TEST_SECONDS:g} s of traffic after the longest window, each at its own "
            "threshold. The loop bench's gap is this one plus where detection put the "
            "window and the traffic the promoted version served."
        ),
    }


def docs_section(scenario: str) -> str:
    """Each scenario's runs keep their own section of docs/benchmarks.md."""
    return "retrain_window" if scenario == "covariate" else f"retrain_window_{scenario}"


def main() -> None:
    from kubeloop.data.fraud import SCENARIOS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    drifting = [s for s in SCENARIOS if s != "stationary"]
    parser.add_argument("--scenario", choices=drifting, default="covariate")
    parser.add_argument(
        "--windows", type=int, nargs="+", default=list(WINDOWS),
        help="window lengths in seconds of traffic (the loop's: dataWindow)",
    )  # fmt: skip
    parser.add_argument(
        "--distill", type=float, nargs="+", default=None,
        help="distillation weights (default: 0 and the demo's distillWeight; 0 on concept)",
    )  # fmt: skip
    parser.add_argument(
        "--replay", type=float, default=None,
        help="replay share (default: the demo's replayFraction, conceptReplayFraction on concept)",
    )  # fmt: skip
    parser.add_argument("--write-docs", action="store_true", help="merge into docs/benchmarks.md")
    args = parser.parse_args()
    result = run(
        tuple(args.seeds), args.scenario, tuple(args.windows),
        tuple(args.distill) if args.distill else None, args.replay,
    )  # fmt: skip
    print(json.dumps(result, indent=2))
    if args.write_docs:
        from kubeloop.bench.runner import OUTPUT, merge, render_section

        name = docs_section(args.scenario)
        current = OUTPUT.read_text() if OUTPUT.exists() else ""
        OUTPUT.write_text(merge(current, {name: render_section(name, result)}))


if __name__ == "__main__":
    main()
