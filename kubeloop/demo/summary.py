"""The measured figures of one demo run, computed from its record (pure; no I/O).

A record is plain JSON: the configuration, when traffic started and when the scenario
began, every answer the caller got (time, version, role, how many predictions were right
once the labels came), one-second samples of status / split / drift, and the operator's
decisions. ``summarize`` turns it into ``summary.json``.
"""

from __future__ import annotations

import bisect
from datetime import datetime
from typing import Any

from kubeloop.operators.reconciler.types import flagged_detectors

UPDATE_CYCLE_GOAL_SECONDS = 120.0


def epoch(value: str | float | None) -> float | None:
    if value is None or isinstance(value, int | float):
        return value
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def decisions_of(record: dict[str, Any], kind: str, version: str | None = None) -> list[dict]:
    return [
        {**d, "t": epoch(d["time"])}
        for d in record.get("decisions", [])
        if d.get("decision") == kind and (version is None or d.get("version") == version)
    ]


def _first(items: list[dict], after: float | None = None) -> dict | None:
    items = [d for d in items if after is None or d["t"] >= after]
    return min(items, key=lambda d: d["t"]) if items else None


def accuracy(answers: list[dict], *, version: str | None = None, start: float | None = None,
             end: float | None = None) -> dict[str, Any]:  # fmt: skip
    """Share of correct predictions among labelled answers sent in [start, end)."""
    chosen = [
        a for a in answers
        if a.get("labelled") and (version is None or a.get("version") == version)
        and (start is None or a["sent_at"] >= start) and (end is None or a["sent_at"] < end)
    ]  # fmt: skip
    n = sum(a["n"] for a in chosen)
    correct = sum(a["correct"] for a in chosen)
    return {"accuracy": correct / n if n else None, "predictions": n}


def window_of(value: Any) -> dict[str, str] | None:
    """A lineage's data window as ``{"start", "end"}``: the training pipeline writes it as
    ``"[start, end)"``, quick training as the mapping itself."""
    if isinstance(value, dict):
        return {"start": str(value.get("start", "")), "end": str(value.get("end", ""))}
    if isinstance(value, str) and "," in value:
        start, end = value.strip("[]() ").split(",", 1)
        return {"start": start.strip(), "end": end.strip()}
    return None


def _rel(t: float | None, t0: float) -> float | None:
    return None if t is None else round(t - t0, 2)


def summarize(record: dict[str, Any]) -> dict[str, Any]:
    t0 = record["started_at"]
    onset = record.get("onset_at")
    answers = record.get("answers", [])
    samples = record.get("samples", [])
    first_stable = record.get("first_version")
    out: dict[str, Any] = {
        "scenario": record["config"]["scenario"],
        "seed": record["config"]["seed"],
        "traffic": {
            "rate_per_second": record["config"]["rate"],
            "requests": len(answers),
            "predictions": sum(a["n"] for a in answers),
            "server_errors": sum(1 for a in answers if a["status"] >= 500 or a["status"] == 0),
            "client_errors": sum(1 for a in answers if 400 <= a["status"] < 500),
            "duration_seconds": round(max((a["sent_at"] for a in answers), default=t0) - t0, 2),
        },
        "first_version": first_stable,
        "label_shift_action": record["config"].get("label_shift_action", "Retrain"),
        "drift_onset_seconds": _rel(onset, t0),
        "retraining_runs": len(decisions_of(record, "retrain")),
        "rollbacks": len(decisions_of(record, "rollback")),
        "promotions": len(decisions_of(record, "promote")),
        # the Feast online store the predictors enriched requests from (None: callers sent
        # every feature): days of snapshots written during the run, the newest, failures
        "online_store": record.get("online_store") or None,
    }
    out["accuracy_before_drift"] = accuracy(answers, start=t0, end=onset)
    # Drift, or label shift alone recorded as an alert (monitoring.labelShift.action
    # Recalibrate or Alert).
    flagged = decisions_of(record, "drift") + [
        d for d in decisions_of(record, "alert") if d.get("reason") == "LabelShift"
    ]
    detected = _first(flagged, after=onset) if onset else None
    submitted = _first(decisions_of(record, "retrain"), after=onset) if onset else None
    # the first run that registered a version (a run the gate stopped registers none)
    runs = decisions_of(record, "retrained")
    registered = [d for d in runs if d.get("version")]
    out["gate_refusals"] = [
        {"seconds": _rel(d["t"], t0), "message": d.get("message", "")}
        for d in runs
        if not d.get("version")
    ]
    retrained = _first(registered, after=onset) if onset else None
    new_version = retrained.get("version") if retrained else None
    recalibrated = _first(decisions_of(record, "recalibrate"), after=onset) if onset else None
    if recalibrated and not new_version:  # the version the recalibration published
        name = (recalibrated.get("evidence") or {}).get("recalibration")
        new_version = next(
            (v for v, lin in (record.get("lineage") or {}).items()
             if lin.get("recalibration") == name),
            None,
        )  # fmt: skip
        retrained = {**recalibrated, "version": new_version} if new_version else None
    out["recalibrated"] = bool(recalibrated)
    promoted = _first(decisions_of(record, "promote", new_version)) if new_version else None
    at_full = None
    if new_version:
        at_full = next(
            (s["time"] for s in samples
             if s.get("split_stable") == new_version and not s.get("split_canary")),
            None,
        )  # fmt: skip
        at_full = at_full or (promoted["t"] if promoted else None)
    out["detection_delay_seconds"] = _rel(detected["t"], onset) if detected else None
    # the detectors that flagged it (the drift decision's evidence)
    out["detected_by"] = sorted(flagged_detectors((detected or {}).get("evidence") or {}))
    out["run_submitted_seconds"] = _rel(submitted["t"], onset) if submitted else None
    out["version_registered_seconds"] = _rel(retrained["t"], onset) if retrained else None
    out["retrained_version"] = new_version
    lineage = (record.get("lineage") or {}).get(new_version) if new_version else None
    out["retrained_by"] = lineage.get("pipeline_name") if lineage else None
    out["retrained_window"] = window_of(lineage.get("window")) if lineage else None
    out["update_cycle_seconds"] = _rel(at_full, onset) if at_full and onset else None
    out["update_cycle_goal_seconds"] = UPDATE_CYCLE_GOAL_SECONDS
    out["update_cycle_goal_met"] = (
        out["update_cycle_seconds"] is not None
        and out["update_cycle_seconds"] <= UPDATE_CYCLE_GOAL_SECONDS
    )
    if onset:
        out["accuracy_during_drift"] = accuracy(
            answers, version=first_stable, start=onset, end=promoted["t"] if promoted else None
        )
    if promoted:
        since = at_full or promoted["t"]
        # Every prediction the new version made from 100 % on, to the end of the traffic: a
        # later canary (the worse candidate) takes a random share of requests, not a kind.
        out["accuracy_after_promotion"] = {
            **accuracy(answers, version=new_version, start=since),
            # the traffic it was measured on: the version's, sent from then (epoch seconds)
            "version": new_version,
            "sent_from": since,
        }
    out["bad_candidate"] = _bad_candidate(record, answers)
    out["accuracy_estimate_error"] = estimate_error(record, answers)
    return out


def estimate_pairs(
    record: dict[str, Any], answers: list[dict]
) -> list[tuple[float, str, float, float]]:
    """``(time, version, estimated, labelled)`` per recorder sample and version: the drift
    service's label-free estimate beside the accuracy the labels later gave the same
    predictions (the version's latest ``estimate_rows`` sent before the sample). A pair
    needs the whole window sent and a fifth of it labelled."""
    rows = int(record.get("estimate_rows") or 0)
    if rows <= 0:
        return []
    served: dict[str, list[dict]] = {}
    for a in sorted(answers, key=lambda a: a["sent_at"]):
        if a.get("version"):
            served.setdefault(a["version"], []).append(a)
    sent_at = {v: [a["sent_at"] for a in items] for v, items in served.items()}
    pairs = []
    for sample in record.get("samples", []):
        for version, estimated in (sample.get("estimated_accuracy") or {}).items():
            items = served.get(version)
            if not items:
                continue
            n = correct = labelled = 0
            for a in reversed(items[: bisect.bisect_right(sent_at[version], sample["time"])]):
                n += a["n"]
                if a.get("labelled"):
                    labelled += a["n"]
                    correct += a["correct"]
                if n >= rows:
                    break
            if n >= rows and labelled * 5 >= rows:
                pairs.append((sample["time"], version, estimated, correct / labelled))
    return pairs


def estimate_error(record: dict[str, Any], answers: list[dict]) -> dict[str, Any] | None:
    """Mean absolute error and bias of the estimate against the labels, before and after
    the onset (``None`` when no pair could be formed)."""
    pairs = estimate_pairs(record, answers)
    if not pairs:
        return None
    onset = record.get("onset_at") or float("inf")
    out: dict[str, Any] = {}
    for name, part in (
        ("before_onset", [p for p in pairs if p[0] < onset]),
        ("after_onset", [p for p in pairs if p[0] >= onset]),
    ):
        if part:
            diffs = [est - acc for _, _, est, acc in part]
            out[name] = {
                "mean_abs_error": round(sum(map(abs, diffs)) / len(diffs), 4),
                "bias": round(sum(diffs) / len(diffs), 4),
                "points": len(diffs),
            }
    return out


def _bad_candidate(record: dict[str, Any], answers: list[dict]) -> dict[str, Any] | None:
    bad = record.get("bad_candidate")
    if not bad:
        return None
    version = bad["version"]
    canary = _first(decisions_of(record, "canary", version))
    rollback = _first(decisions_of(record, "rollback", version))
    promoted = _first(decisions_of(record, "promote", version)) is not None
    served = [a for a in answers if a.get("version") == version]
    window = [
        a for a in answers
        if canary and a["sent_at"] >= canary["t"] and (not rollback or a["sent_at"] < rollback["t"])
    ]  # fmt: skip
    evidence = (rollback or {}).get("evidence", {}).get("checks", {})
    return {
        "version": version,
        "offered_seconds": _rel(bad["offered_at"], record["started_at"]),
        "canary_started_seconds": _rel(canary["t"], record["started_at"]) if canary else None,
        "rolled_back": rollback is not None,
        "promoted": promoted,  # neither: no verdict before the traffic ended
        "rollback_reason": rollback.get("reason") if rollback else None,
        "failed_checks": sorted(k for k, v in evidence.items() if v.get("verdict") == "fail"),
        "seconds_canary_to_rollback": (
            round(rollback["t"] - canary["t"], 2) if rollback and canary else None
        ),
        "requests_served": len(served),
        "predictions_served": sum(a["n"] for a in served),
        "traffic_share_during_canary": (
            round(len([a for a in window if a.get("version") == version]) / len(window), 4)
            if window
            else None
        ),  # fmt: skip
        "accuracy": accuracy(answers, version=version),
    }
