"""The validation report: one HTML table of checks, pass/fail, details and offenders."""

from __future__ import annotations

from html import escape

from kubeloop.components.validate.checks import CheckResult

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;width:100%}th,td{border:1px solid #ccc;padding:6px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}.pass{color:#17692a;font-weight:600}.fail{color:#b00020;font-weight:600}
code{background:#f6f6f6;padding:0 3px}
"""


def render_html(results: list[CheckResult], *, title: str, summary: dict[str, object]) -> str:
    failed = [r for r in results if not r.passed]
    verdict = "PASSED" if not failed else f"FAILED ({len(failed)} of {len(results)} checks)"
    rows = "\n".join(
        "<tr>"
        f"<td>{escape(r.name)}</td>"
        f"<td class='{'pass' if r.passed else 'fail'}'>{'pass' if r.passed else 'FAIL'}</td>"
        f"<td>{escape(r.details)}</td>"
        f"<td>{', '.join(f'<code>{escape(c)}</code>' for c in r.columns)}</td>"
        f"<td>{', '.join(escape(i) for i in r.row_ids)}</td>"
        "</tr>"
        for r in sorted(results, key=lambda r: r.passed)
    )
    facts = "".join(f"<li>{escape(str(k))}: {escape(str(v))}</li>" for k, v in summary.items())
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{escape(title)}</h1><p class='{'pass' if not failed else 'fail'}'>{verdict}</p>"
        f"<ul>{facts}</ul>"
        "<table><thead><tr><th>check</th><th>result</th><th>details</th>"
        "<th>offending columns</th><th>offending row ids</th></tr></thead>"
        f"<tbody>{rows}</tbody></table></body></html>\n"
    )
