"""Run-length and detection-delay measurements of the online detectors (drift environment).

``python -m kubeloop.drift.calibration`` reads a reference sample, its schema and
a stream (Parquet files written by the caller, e.g. a test in the main environment),
builds the detectors exactly as the service does, and prints JSON:

- ``--mode ert``: on a stationary stream, every detector runs until it alarms, is reset,
  and runs again (``--runs`` times); the mean run length is compared with the ERT.
- ``--mode delay``: ``--warmup`` stationary rows, then the drifted rows; the delay is
  the number of drifted instances read before the alarm (in events: steps × ``every``).

Steps are detector steps (one instance each); the univariate detectors count from the
moment their smallest window is full, as alibi-detect defines their ERT.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kubeloop.drift.config import DetectorSettings
from kubeloop.drift.monitor import VersionMonitor, class_columns
from kubeloop.drift.profiles import first_rows, profile_ids
from kubeloop.drift.reference import (
    PREDICTION_COLUMN,
    SCORE_COLUMN,
    Reference,
    reference_from_bytes,
)


def detector_inputs(mon: VersionMonitor, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """What each detector reads for the rows of ``frame`` (which holds features, score,
    prediction, label). Per-feature charts that read profiles once (``mon.profiles``) also
    read whether each row is the first of its profile in ``frame``."""
    enc, label = mon.encoder, mon.reference.spec.label

    def cvm() -> np.ndarray:
        if mon.profiles is None:
            return enc.cvm(frame)
        new = first_rows(frame, mon.reference.spec)
        return np.column_stack([enc.cvm(frame), new])

    inputs = {
        "mmd": lambda: enc.mmd(frame),
        "cvm": cvm,
        "fet": lambda: enc.fet(frame),
        "prediction": lambda: enc.scores(frame[SCORE_COLUMN].to_numpy()),
        "error_rate": lambda: (frame[PREDICTION_COLUMN] != frame[label]).to_numpy(dtype=np.float32)[
            :, None
        ],
        "predicted_class": lambda: class_columns(frame[PREDICTION_COLUMN].to_numpy()),
    }
    return {name: inputs[name]() for name in mon.online}


def _offset(det: Any) -> int:
    # Univariate ERT counts from min(window_sizes); the MMD detector's from t=0.
    return min(det.window_sizes) - 1 if hasattr(det, "window_sizes") else 0


def run_lengths(mon: VersionMonitor, stream: pd.DataFrame, runs: int, seed: int) -> dict[str, Any]:
    """Rows drawn in random passes over ``stream``; within a pass, a profile is new at its
    first row (each pass replays the stream's profiles once, in a random order)."""
    rng = np.random.default_rng(seed)
    out = {}
    ids = profile_ids(stream, mon.reference.spec) if mon.profiles is not None else None
    for name, x in detector_inputs(mon, stream).items():
        det = mon.online[name].detector
        det.reset_state()
        lengths, t, start = [], 0, time.perf_counter()
        order = rng.permutation(len(x))
        i, seen = 0, set()
        while len(lengths) < runs:
            if i == len(order):
                order, i, seen = rng.permutation(len(x)), 0, set()
            t += 1
            row = x[order[i]]
            if name == "cvm" and ids is not None:  # the flag: this pass's first row of it
                row = np.append(row[:-1], float(ids[order[i]] not in seen))
                seen.add(ids[order[i]])
            if det.predict(row, return_test_stat=False)["data"]["is_drift"]:
                lengths.append(t - _offset(det))
                det.reset_state()
                t = 0
            i += 1
        out[name] = {"lengths": lengths, "seconds": time.perf_counter() - start}
    return out


def summarise(erts: dict[str, float], parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Pools the run lengths of several reference draws (``--repeats``).

    alibi-detect's Cramér–von Mises thresholds are simulated with a fresh reference per
    stream, so they target the ERT averaged over reference samples; the ERT given one
    draw of a few hundred rows varies by a factor of two either way. Only the mean over
    many draws can be compared with the configured ERT.
    """
    out = {}
    for name in parts[0]:
        ert = erts[name]
        lengths = np.concatenate([np.asarray(p[name]["lengths"], dtype=np.float64) for p in parts])
        out[name] = {
            "ert": ert,
            "runs": len(lengths),
            "repeats": len(parts),
            "mean_run_length": float(lengths.mean()),
            "ratio": float(lengths.mean() / ert),
            "stderr": float(lengths.std(ddof=1) / np.sqrt(len(lengths))),
            # Run lengths are about geometric, so the mean's standard error is about ERT/sqrt(runs).
            "ratio_ci95": [
                float((lengths.mean() - 1.96 * lengths.std(ddof=1) / np.sqrt(len(lengths))) / ert),
                float((lengths.mean() + 1.96 * lengths.std(ddof=1) / np.sqrt(len(lengths))) / ert),
            ],
            "per_repeat_ratio": [float(np.mean(p[name]["lengths"]) / ert) for p in parts],
            "seconds_per_step": sum(p[name]["seconds"] for p in parts) / max(lengths.sum(), 1),
        }
    return out


def delays(
    mon: VersionMonitor, null: pd.DataFrame, drifted: pd.DataFrame, warmup: int, seed: int
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    pre = null.iloc[rng.permutation(len(null))[:warmup]]
    post = drifted.iloc[rng.permutation(len(drifted))]
    stream = pd.concat([pre, post], ignore_index=True)
    out = {}
    for name, x in detector_inputs(mon, stream).items():
        d = mon.online[name]
        d.detector.reset_state()
        every = d.every
        alarm, false_alarms = None, 0
        for t in range(0, len(x), every):
            if d.detector.predict(x[t], return_test_stat=False)["data"]["is_drift"]:
                if t >= warmup:
                    alarm = t
                    break
                # A false alarm before the onset: acknowledged and reset, as in service.
                false_alarms += 1
                d.detector.reset_state()
        out[name] = {
            "every": every,
            "false_alarms_in_warmup": false_alarms,
            "detected": alarm is not None,
            "delay_events": None if alarm is None else alarm - warmup + 1,
            "drifted_events": len(post),
        }
    return out


def load(reference: Path, schema: Path) -> Reference:
    return reference_from_bytes("calibration", "v0", reference.read_bytes(), schema.read_bytes())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="kubeloop.drift.calibration", description=__doc__.splitlines()[0]
    )
    p.add_argument("--reference", type=Path, required=True)
    p.add_argument("--schema", type=Path, required=True)
    p.add_argument(
        "--stream", type=Path, required=True, help="stationary rows (ert) or drifted rows (delay)"
    )
    p.add_argument("--null", type=Path, help="stationary rows for the warm-up (delay mode)")
    p.add_argument("--mode", choices=["ert", "delay"], required=True)
    p.add_argument("--detectors", default="mmd,cvm,fet,prediction,error_rate,predicted_class")
    p.add_argument("--settings", default="{}", help="JSON detector-setting overrides")
    p.add_argument("--runs", type=int, default=100)
    p.add_argument(
        "--repeats", type=int, default=1, help="reference draws (detector seeds) to pool"
    )
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", type=Path)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # as in the service's worker; threads only contend on small kernels

    wanted = set(args.detectors.split(","))
    overrides = {
        k: k in wanted for k in ("mmd", "cvm", "fet", "prediction", "error_rate", "predicted_class")
    }
    settings = DetectorSettings().with_overrides({**overrides, **json.loads(args.settings)})
    reference = load(args.reference, args.schema)
    start = time.perf_counter()
    mon = VersionMonitor.build(reference, settings, args.cache_dir)
    for name in [n for n in mon.online if n not in wanted]:
        del mon.online[name]
    result: dict[str, Any] = {
        "setup_seconds": time.perf_counter() - start,
        "settings": settings.to_dict(),
    }
    stream = pd.read_parquet(args.stream)
    if args.mode == "ert":
        parts = [run_lengths(mon, stream, args.runs // args.repeats, args.seed)]
        for k in range(1, args.repeats):
            again = VersionMonitor.build(
                reference, replace(settings, seed=settings.seed + k), args.cache_dir
            )
            parts.append(run_lengths(again, stream, args.runs // args.repeats, args.seed + k))
        # Each detector's own ERT (the label-shift charts' may differ from the shared one).
        erts = {name: float(d.detector.ert) for name, d in mon.online.items()}
        result["detectors"] = summarise(erts, parts)
    else:
        if args.null is None:
            p.error("--mode delay needs --null")
        result["detectors"] = delays(
            mon, pd.read_parquet(args.null), stream, args.warmup, args.seed
        )
    json.dump(result, sys.stdout, default=str)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
