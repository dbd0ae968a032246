"""``demo-report/index.html`` and ``summary.json`` from a run's record.

Five plots (matplotlib, embedded as PNG): the timeline of what happened, live accuracy
per version (with the drift service's label-free estimate beside it), the drift statistic
against its threshold, which inputs moved (per-feature batch tests), and the traffic
split. Every figure comes from the record of the run; nothing here is made up.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from kubeloop.demo.summary import epoch, summarize
from kubeloop.operators.observe import MOVED_P_VALUE  # the operator's line: an input "moved"

TIMELINE_DECISIONS = {
    "deploy": "deployed",
    "drift": "drift detected",
    "alert": "alert (label shift)",
    "retrain": "run submitted",
    "retrained": "version registered",
    "recalibrate": "threshold recalibrated",
    "canary": "canary started",
    "step": "canary step",
    "promote": "promoted",
    "rollback": "rolled back",
    "retrain-failed": "run failed",
}
COLORS = ["#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#ff7f0e", "#8c564b"]


def timeline_events(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Marks (onset, offered candidate) and the operator's decisions, in time order."""
    t0 = record["started_at"]
    events = [
        {"t": m["time"] - t0, "label": m["message"], "kind": m["kind"]}
        for m in record.get("marks", [])
    ]
    for d in record.get("decisions", []):
        if d.get("decision") in TIMELINE_DECISIONS:
            label = TIMELINE_DECISIONS[d["decision"]]
            if d.get("version"):
                label += f" ({d['version']})"
            events.append({"t": epoch(d["time"]) - t0, "label": label, "kind": d["decision"],
                           "reason": d.get("reason", ""), "message": d.get("message", "")})  # fmt: skip
    return sorted(events, key=lambda e: e["t"])


def _version_color(version: str | None) -> str:
    try:
        return COLORS[(int(str(version).lstrip("v")) - 1) % len(COLORS)]
    except ValueError:
        return "#7f7f7f"


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def plot_timeline(record: dict[str, Any], events: list[dict[str, Any]]):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 0.45 * max(len(events), 4) + 1))
    for i, e in enumerate(events):
        color = "#d62728" if e["kind"] in ("onset", "rollback") else "#2ca02c" \
            if e["kind"] == "promote" else "#1f77b4"  # fmt: skip
        ax.plot([e["t"]], [i], "o", color=color)
        ax.annotate(f" {e['t']:.0f}s  {e['label']}", (e["t"], i), va="center", fontsize=9)
        ax.axvline(e["t"], color=color, alpha=0.15)
    ax.set_yticks([])
    ax.invert_yaxis()
    end = max([e["t"] for e in events] + [1.0])
    ax.set_xlim(-2, end * 1.35 + 5)
    ax.set_xlabel("seconds since traffic started")
    ax.set_title("What happened")
    return fig


def plot_accuracy(record: dict[str, Any], bin_seconds: float = 5.0):
    import matplotlib.pyplot as plt

    t0 = record["started_at"]
    bins: dict[str, dict[int, list[int]]] = {}
    for a in record.get("answers", []):
        if not a.get("labelled") or not a.get("version"):
            continue
        b = int((a["sent_at"] - t0) // bin_seconds)
        cell = bins.setdefault(a["version"], {}).setdefault(b, [0, 0])
        cell[0] += a["correct"]
        cell[1] += a["n"]
    fig, ax = plt.subplots(figsize=(11, 3.6))
    for version in sorted(bins, key=lambda v: int(v.lstrip("v")) if v[1:].isdigit() else 0):
        cells = sorted(bins[version].items())
        xs = [(b + 0.5) * bin_seconds for b, c in cells if c[1]]
        ys = [c[0] / c[1] for b, c in cells if c[1]]
        ax.plot(xs, ys, "-o", ms=3, label=version, color=_version_color(version))
    estimates: dict[str, list[tuple[float, float]]] = {}
    for s in record.get("samples", []):
        for version, value in (s.get("estimated_accuracy") or {}).items():
            estimates.setdefault(version, []).append((s["time"] - t0, value))
    for version, points in sorted(estimates.items()):
        ax.plot([p[0] for p in points], [p[1] for p in points], "--", lw=1.2,
                color=_version_color(version), label=f"{version} estimated (no labels)")  # fmt: skip
    _onset(ax, record)
    ax.set_ylabel(f"accuracy ({bin_seconds:.0f} s bins)")
    ax.set_xlabel("seconds since traffic started (by prediction time)")
    ax.set_title(
        "Live accuracy per version, from the delayed labels; dashed: estimated from the "
        "scores before the labels came"
    )
    ax.legend(loc="lower left")
    return fig


def plot_drift(record: dict[str, Any]):
    import matplotlib.pyplot as plt

    t0 = record["started_at"]
    series: dict[tuple[str, str], list[tuple[float, float, float | None]]] = {}
    for s in record.get("samples", []):
        for d in s.get("drift", []):
            series.setdefault((d["detector"], d["version"]), []).append(
                (s["time"] - t0, d["statistic"], d.get("threshold"))
            )
    detectors = sorted({k[0] for k in series}) or ["(no drift metrics)"]
    fig, axes = plt.subplots(len(detectors), 1, figsize=(11, 2.4 * len(detectors)), squeeze=False)
    for ax, detector in zip(axes[:, 0], detectors, strict=True):
        for (name, version), points in sorted(series.items()):
            if name != detector:
                continue
            xs = [p[0] for p in points]
            color = _version_color(version)
            ax.plot(xs, [p[1] for p in points], color=color, label=f"{version} statistic")
            ax.plot(xs, [p[2] for p in points], "--", color=color, alpha=0.6,
                    label=f"{version} threshold")  # fmt: skip
        _onset(ax, record)
        ax.set_ylabel(detector)
        ax.legend(loc="upper left", fontsize=8)
    axes[0, 0].set_title("Drift statistic against its threshold (from Prometheus)")
    axes[-1, 0].set_xlabel("seconds since traffic started")
    return fig


def plot_features(record: dict[str, Any], version: str | None = None, top: int = 6):
    """Which inputs moved: -log10 of each feature's batch-test p-value over time for the
    first stable version, the features that went furthest drawn."""
    import math

    import matplotlib.pyplot as plt

    t0 = record["started_at"]
    version = version or record.get("first_version")
    series: dict[str, list[tuple[float, float]]] = {}
    for s in record.get("samples", []):
        for feature, p in ((s.get("feature_p_values") or {}).get(version) or {}).items():
            series.setdefault(feature, []).append((s["time"] - t0, -math.log10(max(p, 1e-300))))
    ranked = sorted(series, key=lambda f: max(v for _, v in series[f]), reverse=True)[:top]
    fig, ax = plt.subplots(figsize=(11, 3.6))
    for feature in ranked:
        points = series[feature]
        ax.plot([p[0] for p in points], [p[1] for p in points], label=feature)
    ax.axhline(-math.log10(MOVED_P_VALUE), color="#888", ls="--", lw=1,
               label=f"p = {MOVED_P_VALUE}")  # fmt: skip
    _onset(ax, record)
    ax.set_yscale("symlog", linthresh=10)
    ax.set_ylabel("-log10 p (batch test vs reference)")
    ax.set_xlabel("seconds since traffic started")
    ax.set_title(f"Which inputs moved ({version}): KS / chi-square of the latest instances")
    if ranked:
        ax.legend(loc="upper left", fontsize=8)
    return fig


def split_steps(samples: list[dict[str, Any]], t0: float) -> list[tuple[float, str]]:
    """``(seconds, "v2 25 %")`` wherever the canary or its traffic percent changed."""
    steps, last = [], None
    for s in samples:
        now = (s.get("split_canary"), float(s.get("canary_percent") or 0))
        if now[0] and now != last:
            steps.append((s["time"] - t0, f"{now[0]} {now[1]:g} %"))
        last = now if now[0] else None
    return steps


def plot_split(record: dict[str, Any]):
    import matplotlib.pyplot as plt

    t0 = record["started_at"]
    samples = record.get("samples", [])
    versions = sorted(
        {s[k] for s in samples for k in ("split_stable", "split_canary") if s.get(k)},
        key=lambda v: int(v.lstrip("v")) if v[1:].isdigit() else 0,
    )
    xs = [s["time"] - t0 for s in samples]
    shares = {v: [] for v in versions}
    for s in samples:
        canary_pct = s.get("canary_percent", 0) if s.get("split_canary") else 0
        for v in versions:
            pct = 0.0
            if v == s.get("split_stable"):
                pct += 100 - canary_pct
            if v == s.get("split_canary"):
                pct += canary_pct
            shares[v].append(pct)
    fig, ax = plt.subplots(figsize=(11, 3))
    if versions:
        ax.stackplot(xs, *[shares[v] for v in versions], labels=versions,
                     colors=[_version_color(v) for v in versions], alpha=0.8)  # fmt: skip
        ax.legend(loc="lower left")
    for x, label in split_steps(samples, t0):  # each canary step, labelled where it starts
        ax.axvline(x, color="#555555", lw=0.8, ls="--")
        ax.annotate(label, (x, 97), xytext=(3, 0), textcoords="offset points", va="top",
                    fontsize=8)  # fmt: skip
    _onset(ax, record)
    ax.set_ylim(0, 100)
    ax.set_ylabel("% of requests")
    ax.set_xlabel("seconds since traffic started")
    ax.set_title("Traffic split at the router")
    return fig


def _onset(ax, record: dict[str, Any]) -> None:
    if record.get("onset_at"):
        ax.axvline(record["onset_at"] - record["started_at"], color="#d62728", ls=":",
                   label="drift onset")  # fmt: skip


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, dict) and set(value) == {"accuracy", "predictions"}:
        acc = value["accuracy"]
        return (
            f"{acc:.3f} on {value['predictions']} predictions" if acc is not None else "no labels"
        )
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    return "—" if value is None else str(value)


def render_html(record: dict[str, Any], summary: dict[str, Any]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    events = timeline_events(record)
    images = [
        ("Timeline", plot_timeline(record, events)),
        ("Live accuracy per version", plot_accuracy(record)),
        ("Drift statistic vs threshold", plot_drift(record)),
        ("Which inputs moved", plot_features(record)),
        ("Traffic split over time", plot_split(record)),
    ]
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(_fmt(v))}</td></tr>"
        for k, v in summary.items()
    )
    event_rows = "".join(
        f"<tr><td>{e['t']:.1f}</td><td>{html.escape(e['label'])}</td>"
        f"<td>{html.escape(e.get('message') or e.get('reason') or '')}</td></tr>"
        for e in events
    )
    figures = "".join(
        f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' "
        f"src='data:image/png;base64,{_png(fig)}'>"
        for title, fig in images
    )
    cycle = summary.get("update_cycle_seconds")
    headline = (
        f"Update cycle: {cycle:.0f} s from drift onset to the retrained version at 100 % "
        f"(goal ≤ {summary['update_cycle_goal_seconds']:.0f} s)"
        if cycle is not None
        else f"Scenario {summary['scenario']}: {summary['retraining_runs']} retraining run(s), "
        f"{summary['rollbacks']} rollback(s)"
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>kubeloop demo report</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ddd;padding:4px 8px;
text-align:left;font-size:14px}}img{{max-width:100%}}</style></head><body>
<h1>kubeloop demo: the closed loop on one machine</h1>
<p><b>{html.escape(headline)}</b></p>
{figures}
<h2>Measured figures</h2><table>{rows}</table>
<h2>Events</h2><table><tr><th>s</th><th>event</th><th>detail</th></tr>{event_rows}</table>
<p>Configuration: <code>{html.escape(json.dumps(record["config"]))}</code></p>
</body></html>
"""


def write_report(record: dict[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """Writes ``summary.json``, ``record.json`` and ``index.html``; returns the summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(record)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "record.json").write_text(json.dumps(record))
    (out / "index.html").write_text(render_html(record, summary))
    return summary
