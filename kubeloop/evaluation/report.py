"""The evaluation report: ROC, PR, reliability and per-slice plots in one HTML file.

Plots are rendered with matplotlib's Agg backend (no display needed) and embedded as
base64 PNGs, so the report is a single self-contained file that KFP's UI, a browser
or the demo can open.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

from kubeloop.evaluation.metrics import Evaluation


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 3.4), dpi=100)
    return plt, fig, ax


def _png(plt, fig) -> str:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def roc_plot(ev: Evaluation) -> str:
    plt, fig, ax = _figure()
    ax.plot(ev.roc_curve["fpr"], ev.roc_curve["tpr"], label=f"ROC-AUC {ev.roc_auc:.3f}")
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC curve")
    ax.legend(loc="lower right")
    return _png(plt, fig)


def pr_plot(ev: Evaluation) -> str:
    plt, fig, ax = _figure()
    ax.plot(ev.pr_curve["recall"], ev.pr_curve["precision"], label=f"PR-AUC {ev.pr_auc:.3f}")
    ax.axhline(ev.positives / ev.rows, linestyle="--", color="grey", linewidth=0.8)
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall curve", ylim=(0, 1.02))
    ax.legend(loc="upper right")
    return _png(plt, fig)


def reliability_plot(ev: Evaluation) -> str:
    plt, fig, ax = _figure()
    xs = [b.mean_score for b in ev.reliability]
    ys = [b.positive_rate for b in ev.reliability]
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=0.8, label="perfect calibration")
    ax.plot(xs, ys, "o-", label=f"model (ECE {ev.ece:.3f})")
    ax.set(xlabel="mean predicted probability", ylabel="observed fraud rate", title="Reliability")
    ax.legend(loc="upper left")
    return _png(plt, fig)


def slice_plot(ev: Evaluation, column: str) -> str:
    plt, fig, ax = _figure()
    rows = ev.slices[column]
    names = [r["slice"] for r in rows]
    values = [r["roc_auc"] if r["roc_auc"] == r["roc_auc"] else 0.0 for r in rows]
    ax.barh(names, values)
    ax.axvline(ev.roc_auc, color="black", linewidth=0.8, label="overall")
    ax.set(xlabel="ROC-AUC (0 = undefined)", title=f"ROC-AUC by {column}", xlim=(0, 1))
    ax.legend(loc="lower left")
    return _png(plt, fig)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if value != value else f"{value:.4f}"
    return html.escape(str(value))


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in r.values()) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(ev: Evaluation, title: str = "kubeloop model evaluation") -> str:
    """The full report (headline table, confusion matrix, four kinds of plot)."""
    images = [roc_plot(ev), pr_plot(ev), reliability_plot(ev)]
    images += [slice_plot(ev, column) for column in ev.slices]
    imgs = "".join(f'<img alt="plot" src="data:image/png;base64,{b64}">' for b64 in images)
    (tn, fp), (fn, tp) = ev.confusion_matrix
    confusion = _table(
        [
            {"actual \\ predicted": "legitimate (0)", "0": tn, "1": fp},
            {"actual \\ predicted": "fraud (1)", "0": fn, "1": tp},
        ]
    )
    slices = "".join(
        f"<h2>Slices by {html.escape(col)}</h2>{_table(rows)}" for col, rows in ev.slices.items()
    )
    headline = _table([{k: v for k, v in ev.headline().items()}])
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{margin:4px}"
        f"</style></head><body><h1>{html.escape(title)}</h1>"
        f"<h2>Headline metrics</h2>{headline}<h2>Confusion matrix at threshold "
        f"{ev.threshold:.3f}</h2>{confusion}<h2>Plots</h2><div>{imgs}</div>{slices}"
        "</body></html>"
    )
