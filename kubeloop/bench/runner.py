"""Discovers benchmark modules, runs them and merges their sections into docs/benchmarks.md.

A benchmark is ``bench/<name>/bench_*.py`` exposing ``run() -> dict`` with ``title``,
``table`` (a list of rows, each a dict of column → value), ``command`` (how to
reproduce it) and optional ``notes``. Each one owns the section between
``<!-- <name>:begin -->`` and ``<!-- <name>:end -->``; everything else in the file
(other benchmarks' sections, written by this runner or by their own scripts) is kept.
"""

from __future__ import annotations

import importlib.util
import platform
import re
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from kubeloop.generated import REPO_ROOT

BENCH_DIR = REPO_ROOT / "bench"
OUTPUT = REPO_ROOT / "docs" / "benchmarks.md"
HEADER = "# kubeloop benchmarks\n"


class BenchmarkError(RuntimeError):
    """A benchmark module is malformed; the message names it."""


def discover(root: Path = BENCH_DIR) -> dict[str, Path]:
    """``{name: module path}`` for every ``bench/<name>/bench_*.py`` (first one per folder)."""
    found: dict[str, Path] = {}
    for path in sorted(root.glob("*/bench_*.py")):
        found.setdefault(path.parent.name, path)
    return found


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"kubeloop_bench_{path.parent.name}", path)
    if spec is None or spec.loader is None:
        raise BenchmarkError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    # registered while it runs, as an import would: dataclasses look their module up there
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    if not callable(getattr(module, "run", None)):
        raise BenchmarkError(f"{path} has no run() function")
    return module


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value).replace("|", "\\|")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of ``rows``; the first row's keys are the columns."""
    columns = list(rows[0])
    return "\n".join([
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows),
    ])  # fmt: skip


def _code(text: str) -> str:
    """``text`` as a Markdown code span (double backticks when it holds one)."""
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def render_section(name: str, result: dict[str, Any]) -> str:
    for key in ("title", "table", "command"):
        if key not in result:
            raise BenchmarkError(f"benchmark {name!r}: run() result lacks {key!r}")
    rows = result["table"]
    if not rows:
        raise BenchmarkError(f"benchmark {name!r}: empty table")
    lines = [
        f"<!-- {name}:begin -->",
        f"## {result['title']}",
        "",
        f"Command: {_code(result['command'])}  ",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on "
        f"{platform.machine()}, {_cpus()} CPUs, Python {platform.python_version()}.",
        "",
        markdown_table(rows),
    ]
    if result.get("notes"):
        lines += ["", result["notes"].strip()]
    lines.append(f"<!-- {name}:end -->")
    return "\n".join(lines) + "\n"


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def merge(existing: str, sections: dict[str, str]) -> str:
    """Replaces each named section in place, appends new ones, keeps everything else."""
    text = existing or HEADER
    for name, body in sections.items():
        pattern = re.compile(
            rf"<!-- {re.escape(name)}:begin -->\n.*?<!-- {re.escape(name)}:end -->\n?", re.S
        )
        if pattern.search(text):
            text = pattern.sub(lambda _m, body=body: body, text, count=1)
        else:
            text = text.rstrip("\n") + "\n\n" + body
    return text


def run_all(
    only: list[str] | None = None, output: Path = OUTPUT, echo=print, root: Path = BENCH_DIR
) -> dict[str, str]:
    available = discover(root)
    names = only or list(available)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise BenchmarkError(f"unknown benchmark(s) {unknown}; available: {sorted(available)}")
    sections = {}
    for name in names:
        echo(f"[bench] {name}: running {available[name]}")
        started = time.perf_counter()
        sections[name] = render_section(name, load(available[name]).run())
        echo(f"[bench] {name}: done in {time.perf_counter() - started:.0f}s")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(merge(output.read_text() if output.exists() else "", sections))
    echo(f"[bench] wrote {output}")
    return sections
