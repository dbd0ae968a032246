"""Each image's dependency set resolves: no image engine runs here, so the pip installs
of every Dockerfile target (its build stages followed, requirement files expanded) are
resolved together with ``pip install --dry-run --ignore-installed --report`` against the
configured index. The torch index is left out: PyPI serves the same version. Images
with the same requirement set are resolved once.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from kubeloop import images
from tests.unit.test_images_dockerfiles import (
    installed_requirements,
    option_values,
    parse_dockerfile,
    pip_commands,
    requirement_lines,
)

ROOT = Path(__file__).resolve().parents[2]
DF = parse_dockerfile((ROOT / images.DOCKERFILE).read_text())


def constraint_files(target: str) -> tuple[str, ...]:
    found = []
    for stage in DF.closure(target):
        for run in stage.args("RUN"):
            for verb, pip_args in pip_commands(run):
                if verb == "install":
                    found += option_values(pip_args, "-c", "--constraint")
    return tuple(dict.fromkeys(str(ROOT / c) for c in found))


TORCH_VERSION = next(
    a.partition("=")[2]
    for a in DF.stages["deps-torch"].args("ARG")
    if a.startswith("TORCH_VERSION=")
)


def on_pypi(requirement: str) -> str:
    """The torch pin with the Dockerfile's default version and without its variant's
    local tag (``+cpu``): PyPI serves the same version."""
    return requirement.replace("${TORCH_VERSION}", TORCH_VERSION).replace("+${TORCH_VARIANT}", "")


def requirement_set(target: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(requirements, constraint files) of every pip install building ``target``; the
    torch index is left out (PyPI serves the same version)."""
    reqs = tuple(dict.fromkeys(on_pypi(r) for r in installed_requirements(DF, target)))
    return reqs, constraint_files(target)


SETS: dict[tuple, list[str]] = {}
for _name in images.IMAGES:
    SETS.setdefault(requirement_set(_name), []).append(_name)


def _pins(constraint_files: tuple[str, ...]) -> dict[str, str]:
    pins = {}
    for path in constraint_files:
        for line in Path(path).read_text().splitlines():
            m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)", line.strip())
            if m:
                pins[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return pins


@pytest.fixture(scope="module")
def resolutions(tmp_path_factory) -> dict[tuple, dict]:
    """Resolve every distinct requirement set, concurrently (pip is mostly network-bound)."""
    procs, reports = {}, {}
    for key in SETS:
        reqs, constraints = key
        workdir = tmp_path_factory.mktemp("pip")
        reports[key] = workdir / "report.json"
        args = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
                "--report", str(reports[key]), "--disable-pip-version-check"]  # fmt: skip
        for c in constraints:
            args += ["-c", c]
        args += list(reqs)
        procs[key] = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=workdir,
        )
    results = {}
    for key, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=420)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail(f"resolving {SETS[key]} took over 420 s")
        lines = [line for line in (out + err).splitlines() if "is ignored" not in line]
        results[key] = (
            json.loads(reports[key].read_text()) if proc.returncode == 0 else "\n".join(lines[-40:])
        )
    return results


def test_every_image_has_a_requirement_set() -> None:
    for (reqs, constraints), names in SETS.items():
        assert reqs, f"images {names}: no pip install found for their targets"
        for path in constraints:
            assert Path(path).exists(), f"{path} not found in the build context"


def test_images_share_three_environments() -> None:
    """The pipeline stages and the predictor share one resolution, the drift service and
    the operator have their own."""
    groups = sorted(sorted(names) for names in SETS.values())
    assert groups == sorted([sorted((*images.STAGES, "predictor")), ["drift"], ["operator"]]), (
        groups
    )
    shared = next(key for key, names in SETS.items() if "predictor" in names)
    assert "torch==2.13.0" in shared[0]
    assert list(shared[0][1:]) == [r for r in requirement_lines(images.RUNTIME_REQUIREMENTS)]


@pytest.mark.slow
@pytest.mark.parametrize("key", list(SETS), ids=["+".join(v) for v in SETS.values()])
def test_image_dependencies_resolve(resolutions, key) -> None:
    report = resolutions[key]
    if isinstance(report, str):
        pytest.fail(f"images {SETS[key]} do not resolve:\n{report}")
    resolved = {
        re.sub(r"[-_.]+", "-", item["metadata"]["name"]).lower(): item["metadata"]["version"]
        for item in report["install"]
    }
    reqs, constraints = key
    # Every requirement (requirement files expanded) is in the resolution at a version
    # its specifier admits.
    for spec in reqs:
        req = Requirement(spec)
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in resolved, f"{SETS[key]}: {req.name} missing from the resolution"
        assert req.specifier.contains(resolved[name], prereleases=True), (name, resolved[name])
    # The constraint files' pins hold.
    for name, version in _pins(constraints).items():
        if name in resolved:
            assert resolved[name] == version, f"{name}: resolved {resolved[name]}, pinned {version}"


@pytest.mark.slow
def test_drift_image_keeps_its_own_numpy(resolutions) -> None:
    drift = [k for k, names in SETS.items() if "drift" in names]
    assert drift, "no drift target"
    report = resolutions[drift[0]]
    assert isinstance(report, dict), f"the drift image does not resolve:\n{report}"
    resolved = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in report["install"]}
    assert "alibi-detect" in resolved and int(resolved["numpy"].split(".")[0]) < 2
