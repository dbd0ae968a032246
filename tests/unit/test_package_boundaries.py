"""No test code ships: installed modules never import pytest, hypothesis or ``tests``.

The installed distribution is ``kubeloop/`` plus ``components/``, ``pipelines/`` and
``operators/`` mapped into the ``kubeloop`` namespace (setup.py), less their ``tests``
folders. Every module there is parsed (imports inside functions count too).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ("kubeloop", "components", "pipelines", "operators")
# Top-level modules that only tests may import.
TEST_ONLY = ("pytest", "_pytest", "hypothesis", "tests", "moto", "celpy")


def shipped_modules() -> list[Path]:
    found = []
    for top in SHIPPED:
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT)
            if "tests" in rel.parts or path.name.startswith("test_") or path.name == "conftest.py":
                continue
            found.append(path)
    return found


def test_only_imports(source: str) -> list[str]:
    """The imports in ``source`` that name a test-only module (or a test module)."""
    bad = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] in TEST_ONLY or any(p == "testing" or p.startswith("test_") for p in parts):
                bad.append(name)
    return bad


test_only_imports.__test__ = False  # a helper, not a test


def test_the_check_sees_shipped_modules() -> None:
    modules = {p.relative_to(ROOT).as_posix() for p in shipped_modules()}
    assert "kubeloop/serving/predictor.py" in modules
    assert "operators/reconciler/core.py" in modules
    assert not any("/tests/" in m for m in modules)


@pytest.mark.parametrize(
    ("source", "flagged"),
    [
        ("import pytest", ["pytest"]),
        (
            "def f():\n    from tests.support.fixtures import RouterTraffic",
            ["tests.support.fixtures"],
        ),
        ("from kubeloop.testing import x", ["kubeloop.testing"]),
        ("import hypothesis.strategies as st", ["hypothesis.strategies"]),
        ("from kubeloop.training.quick import train_bundle", []),
        ("from . import tests_like", []),
    ],
)
def test_the_check_flags_test_imports(source: str, flagged: list[str]) -> None:
    assert test_only_imports(source) == flagged


def test_no_shipped_module_imports_test_code() -> None:
    offenders = {
        path.relative_to(ROOT).as_posix(): bad
        for path in shipped_modules()
        if (bad := test_only_imports(path.read_text()))
    }
    assert not offenders, f"shipped modules import test code: {offenders}"
