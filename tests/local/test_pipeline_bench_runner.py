"""The benchmark runner: discovery, section rendering and merging into docs/benchmarks.md."""

from __future__ import annotations

import pytest

from kubeloop.bench import runner
from kubeloop.bench.runner import BenchmarkError, merge, render_section

RESULT = {"title": "Toy", "command": "make toy", "table": [{"case": "a", "seconds": 1.23456}]}
OTHER = "<!-- serving:begin -->\n## Serving\nkept as is\n<!-- serving:end -->\n"


def test_render_and_merge_keep_other_sections():
    section = render_section("toy", RESULT)
    assert "| case | seconds |" in section and "| a | 1.23 |" in section
    assert "Command: `make toy`" in section
    quoted = render_section("toy", {**RESULT, "command": "bench --title 'Loop (`demo`)'"})
    assert "Command: `` bench --title 'Loop (`demo`)' ``" in quoted
    doc = merge("# kubeloop benchmarks\n\n" + OTHER, {"toy": section})
    assert OTHER in doc and section in doc
    again = merge(doc, {"toy": render_section("toy", {**RESULT, "title": "Toy v2"})})
    assert again.count("<!-- toy:begin -->") == 1 and "Toy v2" in again and OTHER in again


def test_bad_results_are_named():
    with pytest.raises(BenchmarkError, match="lacks 'command'"):
        render_section("toy", {"title": "x", "table": [{"a": 1}]})
    with pytest.raises(BenchmarkError, match="empty table"):
        render_section("toy", {**RESULT, "table": []})


def test_run_all_discovers_and_writes(tmp_path):
    bench = tmp_path / "bench" / "toy"
    bench.mkdir(parents=True)
    (bench / "bench_toy.py").write_text(
        "def run():\n    return {'title': 'Toy', 'command': 'c', 'table': [{'n': 1}]}\n"
    )
    (tmp_path / "bench" / "toy_without_module").mkdir()
    assert list(runner.discover(tmp_path / "bench")) == ["toy"]
    out = tmp_path / "benchmarks.md"
    out.write_text("# kubeloop benchmarks\n\n" + OTHER)
    runner.run_all(output=out, echo=lambda _: None, root=tmp_path / "bench")
    text = out.read_text()
    assert OTHER in text and "## Toy" in text
    with pytest.raises(BenchmarkError, match="unknown benchmark"):
        runner.run_all(["nope"], output=out, echo=lambda _: None, root=tmp_path / "bench")
