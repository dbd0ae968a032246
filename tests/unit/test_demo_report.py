"""The demo's pure parts: configuration checks, the summary's figures, the report, windows."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from kubeloop.demo.config import LoopConfig
from kubeloop.demo.report import (
    plot_accuracy,
    plot_features,
    split_steps,
    timeline_events,
    write_report,
)
from kubeloop.demo.retrain import corrupt_labels, recent_window, window_seconds
from kubeloop.demo.summary import summarize

T0 = 1_800_000_000.0


def iso(t: float) -> str:
    return pd.Timestamp(t, unit="s", tz="UTC").isoformat()


def answer(t, version, n=4, correct=4, status=200, labelled=True):
    return {"sent_at": t, "version": version, "role": "stable", "status": status, "n": n,
            "correct": correct, "labelled": labelled}  # fmt: skip


def loop_record() -> dict:
    """v1 serves; drift at +40 s; v2 retrained, canaried, promoted; v3 offered and rolled back."""
    answers = [answer(T0 + t, "v1") for t in range(0, 40)]  # before: all right
    answers += [answer(T0 + t, "v1", correct=3) for t in range(40, 80)]  # during: 75 %
    answers += [answer(T0 + t, "v2") for t in range(70, 80)]  # canary traffic
    answers += [answer(T0 + t, "v2", correct=4) for t in range(80, 120)]  # after
    answers += [answer(T0 + t, "v3", correct=1) for t in range(125, 131)]  # bad canary
    answers += [answer(T0 + t, "v2", correct=2) for t in range(125, 131)]  # v2 beside it
    answers.append(answer(T0 + 131, None, n=0, correct=0, status=503, labelled=False))
    decisions = [
        ("deploy", 0, "v1"), ("drift", 52, "v1"), ("retrain", 55, "v1"),
        ("retrained", 68, "v2"), ("canary", 70, "v2"), ("step", 75, "v2"),
        ("promote", 80, "v2"), ("hold", 81, "v2"), ("canary", 125, "v3"),
        ("rollback", 131, "v3"),
    ]  # fmt: skip
    samples = [
        {"time": T0 + t, "split_stable": "v1" if t < 82 else "v2",
         "split_canary": "v2" if 70 <= t < 82 else ("v3" if 125 <= t < 131 else None),
         "canary_percent": 50 if 70 <= t < 82 or 125 <= t < 131 else 0,
         "drift": [{"version": "v1", "detector": "prediction", "statistic": t / 100,
                    "threshold": 0.5, "detected": t > 50}]}
        for t in range(0, 135)
    ]  # fmt: skip
    return {
        "config": LoopConfig(v1_trainer="quick").to_dict(),
        "started_at": T0,
        "onset_at": T0 + 40,
        "first_version": "v1",
        "answers": answers,
        "samples": samples,
        "decisions": [
            {
                "time": iso(T0 + t),
                "decision": d,
                "version": v,
                "reason": "R",
                "message": d,
                "evidence": {
                    "checks": {
                        "score_distribution": {"verdict": "fail"},
                        "error_rate": {"verdict": "pass"},
                    }
                }
                if d == "rollback"
                else {},
            }
            for d, t, v in decisions
        ],  # fmt: skip
        "marks": [{"time": T0 + 40, "kind": "onset", "message": "covariate drift starts"}],
        "bad_candidate": {"version": "v3", "offered_at": T0 + 120},
    }


def test_summary_measures_the_cycle_from_the_record():
    s = summarize(loop_record())
    assert s["drift_onset_seconds"] == 40
    assert s["detection_delay_seconds"] == pytest.approx(12)
    assert s["run_submitted_seconds"] == pytest.approx(15)
    assert s["version_registered_seconds"] == pytest.approx(28)
    assert s["retrained_version"] == "v2"
    # 100 % on v2 at the router: the first sample with v2 stable and no canary (t = 82)
    assert s["update_cycle_seconds"] == pytest.approx(42)
    assert s["update_cycle_goal_met"] is True
    assert s["accuracy_before_drift"] == {"accuracy": 1.0, "predictions": 160}
    assert s["accuracy_during_drift"]["accuracy"] == pytest.approx(0.75)
    # Every prediction v2 made from 100 % on (t = 82), the share it kept while v3 was a
    # canary included: 38 requests all right, 6 half right.
    after = s["accuracy_after_promotion"]
    assert (after["version"], after["sent_from"]) == ("v2", T0 + 82)
    assert after["predictions"] == 44 * 4
    assert after["accuracy"] == pytest.approx((38 * 4 + 6 * 2) / (44 * 4))
    bad = s["bad_candidate"]
    assert bad["rolled_back"] and bad["seconds_canary_to_rollback"] == pytest.approx(6)
    assert bad["requests_served"] == 6 and bad["predictions_served"] == 24
    assert bad["failed_checks"] == ["score_distribution"]
    assert s["traffic"]["server_errors"] == 1
    assert (s["retraining_runs"], s["rollbacks"], s["promotions"]) == (1, 1, 1)


def test_stationary_record_has_no_cycle():
    record = loop_record()
    record["onset_at"] = None
    record["decisions"] = record["decisions"][:1]
    record["bad_candidate"] = None
    s = summarize(record)
    assert s["retraining_runs"] == 0 and s["rollbacks"] == 0
    assert s["update_cycle_seconds"] is None and s["update_cycle_goal_met"] is False
    assert s["detection_delay_seconds"] is None and s["bad_candidate"] is None
    assert s["accuracy_before_drift"]["predictions"] == sum(
        a["n"] for a in record["answers"] if a["labelled"]
    )


def test_slow_cycle_misses_the_goal():
    record = loop_record()
    for sample in record["samples"]:
        sample["split_stable"] = "v1"  # the router never moved
    for d in record["decisions"]:
        if d["decision"] == "promote":
            d["time"] = iso(T0 + 40 + 130)
    s = summarize(record)
    assert s["update_cycle_seconds"] == pytest.approx(130)
    assert s["update_cycle_goal_met"] is False


def test_a_run_the_gate_stopped_registers_no_version_and_the_next_one_counts():
    record = loop_record()
    refused = {**record["decisions"][2], "decision": "retrained", "version": None,
               "time": iso(T0 + 58)}  # fmt: skip
    record["decisions"].insert(3, refused)
    s = summarize(record)
    assert s["retrained_version"] == "v2"
    assert s["version_registered_seconds"] == pytest.approx(28)
    assert s["update_cycle_seconds"] == pytest.approx(42)
    assert [r["seconds"] for r in s["gate_refusals"]] == [pytest.approx(58)]
    assert summarize(loop_record())["gate_refusals"] == []


def test_report_writes_summary_and_four_embedded_plots(tmp_path):
    summary = write_report(loop_record(), tmp_path)
    page = (tmp_path / "index.html").read_text()
    assert len(re.findall(r"src='data:image/png;base64,[A-Za-z0-9+/=]{1000,}'", page)) == 5
    for text in ("drift detected (v1)", "promoted (v2)", "rolled back (v3)", "Update cycle: 42 s"):
        assert text in page, text
    assert json.loads((tmp_path / "summary.json").read_text()) == summary


def test_timeline_orders_marks_and_decisions_and_drops_holds():
    events = timeline_events(loop_record())
    assert [e["t"] for e in events] == sorted(e["t"] for e in events)
    labels = [e["label"] for e in events]
    assert "covariate drift starts" in labels and not any("hold" in x for x in labels)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"scenario": "sudden"}, "scenario"),
        ({"rate": 0}, "rate"),
        ({"onset_seconds": 50, "duration_seconds": 55}, "duration_seconds"),
        ({"v1_trainer": "sklearn"}, "v1_trainer"),
        ({"rate": 400, "batch": 1}, "requests/s"),
        ({"replay_fraction": 1.0}, "replay_fraction"),
        ({"distill_weight": -0.1}, "distill_weight"),
        ({"steps": (50, 100, 25)}, "steps"),
        ({"steps": (25, 50)}, "end at 100"),
    ],
)
def test_bad_configuration_is_named(kwargs, named):
    with pytest.raises(ValueError, match=named):
        LoopConfig(**kwargs)


def test_recent_window_and_corrupted_labels():
    assert window_seconds("40s") == 40 and window_seconds("2h") == 7200
    with pytest.raises(ValueError, match="data_window"):
        window_seconds("forty")
    frame = pd.DataFrame({"labelled_at": [10.0, 50.0, 95.0, 100.0], "is_fraud": [0, 1, 0, 1]})
    assert list(recent_window(frame, 10, now=100.0)["labelled_at"]) == [95.0, 100.0]
    with pytest.raises(ValueError, match="labelled_at"):
        recent_window(frame.drop(columns="labelled_at"), 10)
    big = pd.DataFrame({"is_fraud": [1] * 50 + [0] * 950, "amount": range(1000)})
    inverted = corrupt_labels(big, "is_fraud")
    assert inverted["is_fraud"].sum() == 950 and list(inverted["amount"]) == list(big["amount"])
    assert big["is_fraud"].sum() == 50  # the input is left alone


def test_fresh_window_waits_for_traffic_labelled_after_the_run_started(tmp_path):
    import time

    from kubeloop.demo.retrain import fresh_window

    now = time.time()
    path = tmp_path / "labelled.parquet"
    pd.DataFrame({"labelled_at": [now - 30, now + 0.5, now + 1.0, now + 1.5],
                  "is_fraud": [0, 1, 0, 1]}).to_parquet(path)  # fmt: skip
    rows = fresh_window(path, 1.2, timeout=5, poll=0.1, start=now)
    assert list(rows["labelled_at"]) == [now + 0.5, now + 1.0]
    with pytest.raises(TimeoutError, match="fresh labelled traffic"):
        fresh_window(path, 2, timeout=0.2, poll=0.1, start=now)


def test_split_steps_label_each_canary_step():
    samples = [
        {"time": T0 + t, "split_canary": c, "canary_percent": p}
        for t, c, p in [(0, None, 0), (1, "v2", 25), (2, "v2", 25), (3, "v2", 50),
                        (4, None, 0), (5, "v3", 25), (6, "v3", 25)]
    ]  # fmt: skip
    assert split_steps(samples, T0) == [(1, "v2 25 %"), (3, "v2 50 %"), (5, "v3 25 %")]


def test_summary_names_the_retrained_window_from_the_lineage():
    record = loop_record()
    window = {"start": iso(T0 + 55), "end": iso(T0 + 65)}
    record["lineage"] = {"v2": {"pipeline_name": "kubeloop-training", "window": window}}
    summary = summarize(record)
    assert summary["retrained_window"] == window
    assert summary["retrained_by"] == "kubeloop-training"
    assert summarize(loop_record())["retrained_window"] is None
    record["lineage"]["v2"]["window"] = f"[{window['start']}, {window['end']})"  # the pipeline's
    assert summarize(record)["retrained_window"] == window


def test_estimate_error_compares_the_estimate_with_what_the_labels_later_said():
    record = loop_record()
    record["estimate_rows"] = 20  # five answers of 4 predictions
    for s in record["samples"]:
        t = s["time"] - T0
        # v1's estimate: right before the onset, 0.05 too high after it
        s["estimated_accuracy"] = {"v1": 1.0 if t < 40 else 0.80}
    err = summarize(record)["accuracy_estimate_error"]
    before, after = err["before_onset"], err["after_onset"]
    assert before["mean_abs_error"] == 0.0 and before["points"] > 30
    # after the onset the labelled accuracy is 0.75 once the window holds only drifted rows
    assert after["bias"] > 0 and 0.04 < after["mean_abs_error"] <= 0.25
    # a window still being filled is no evidence: no pair before 5 answers were sent
    assert before["points"] == len([t for t in range(0, 40) if t >= 4])


def test_estimate_error_needs_labels_and_a_window():
    record = loop_record()
    for s in record["samples"]:
        s["estimated_accuracy"] = {"v1": 0.9}
    assert summarize(record)["accuracy_estimate_error"] is None  # no estimate_rows recorded
    record["estimate_rows"] = 20
    record["answers"] = [{**a, "labelled": False} for a in record["answers"]]
    assert summarize(record)["accuracy_estimate_error"] is None


def test_accuracy_plot_draws_the_estimate_beside_the_labels(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    record = loop_record()
    record["estimate_rows"] = 20
    for s in record["samples"]:
        s["estimated_accuracy"] = {"v1": 0.95, **({"v2": 0.9} if s["time"] > T0 + 70 else {})}
    lines = {line.get_label(): line for line in plot_accuracy(record).axes[0].get_lines()}
    estimated = lines["v1 estimated (no labels)"]
    assert set(estimated.get_ydata()) == {0.95} and len(estimated.get_xdata()) == 135
    assert "v2 estimated (no labels)" in lines and "v1" in lines  # beside the labelled line
    write_report(record, tmp_path)
    assert json.loads((tmp_path / "summary.json").read_text())["accuracy_estimate_error"]


def test_feature_plot_draws_the_inputs_that_moved_furthest():
    import matplotlib

    matplotlib.use("Agg")
    record = loop_record()
    for s in record["samples"]:
        t = s["time"] - T0
        moved = 1e-12 if t > 45 else 0.5  # amount moves after the onset
        s["feature_p_values"] = {"v1": {"amount": moved, "hour": 0.6, "is_foreign": 0.3},
                                 "v2": {"amount": 0.9}}  # fmt: skip
    axes = plot_features(record, top=2).axes[0]
    lines = {line.get_label(): line for line in axes.get_lines()}
    assert {"amount", "is_foreign"} <= set(lines) and "hour" not in lines  # the top 2
    assert max(lines["amount"].get_ydata()) == pytest.approx(12.0)
    assert "p = 0.01" in lines  # the operator's line
