"""Each image's dependency set resolves: no image engine runs here, so the `pip install`
lines of every Dockerfile are collected and resolved together with
``pip install --dry-run --ignore-installed --report`` against PyPI.

The project itself (``.``) stands for its declared dependencies (pyproject.toml), and a
custom index (the CPU torch index) is replaced by PyPI, which serves the same version.
Images with the same requirement set are resolved once.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
OPTIONS_WITH_VALUE = {
    "-i",
    "--index-url",
    "--extra-index-url",
    "-f",
    "--find-links",
    "-t",
    "--target",
}


def image_dockerfiles() -> dict[str, Path]:
    found = {p.parent.name: p for p in sorted(ROOT.glob("components/*/Dockerfile"))}
    for name, rel in (
        ("predictor", "kubeloop/serving/Dockerfile"),
        ("drift", "kubeloop/monitoring/Dockerfile"),
        ("operator", "operators/Dockerfile"),
    ):
        if (ROOT / rel).exists():
            found[name] = ROOT / rel
    return found


def run_commands(text: str) -> list[str]:
    joined = re.sub(r"\\\n", " ", text)
    return [
        line.strip()[4:] for line in joined.splitlines() if line.strip().upper().startswith("RUN ")
    ]


def project_requirements(extras: set[str]) -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project.get("optional-dependencies", {})[extra]
    return reqs


def requirement_set(dockerfile: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(requirements, constraint files) of every pip install in the Dockerfile."""
    reqs: list[str] = []
    constraints: list[str] = []
    for run in run_commands(dockerfile.read_text()):
        for cmd in re.split(r"&&|;", run):
            tokens = shlex.split(cmd)
            for i in range(len(tokens) - 1):
                if not (tokens[i].endswith("pip") and tokens[i + 1] == "install"):
                    continue
                args, skip = tokens[i + 2 :], None
                for j, arg in enumerate(args):
                    if skip == j:
                        continue
                    if arg in ("-c", "--constraint", "-r", "--requirement"):
                        path = ROOT / args[j + 1]
                        assert path.exists(), (
                            f"{dockerfile}: {args[j + 1]} not found in the build context"
                        )
                        (constraints if arg in ("-c", "--constraint") else reqs).append(
                            ("-r:" if arg in ("-r", "--requirement") else "") + str(path)
                        )
                        skip = j + 1
                    elif arg in OPTIONS_WITH_VALUE:
                        skip = j + 1
                    elif arg.startswith("-"):
                        continue
                    elif arg == "." or arg.startswith(".["):
                        extras = set(re.findall(r"[\w-]+", arg[1:]))
                        reqs += project_requirements(extras)
                    else:
                        reqs.append(arg)
    return tuple(dict.fromkeys(reqs)), tuple(dict.fromkeys(constraints))


DOCKERFILES = image_dockerfiles()
SETS: dict[tuple, list[str]] = {}
for _name, _path in sorted(DOCKERFILES.items()):
    SETS.setdefault(requirement_set(_path), []).append(_name)


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
    procs = {}
    for key in SETS:
        reqs, constraints = key
        args = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
                "--quiet", "--report", "-", "--disable-pip-version-check"]  # fmt: skip
        for c in constraints:
            args += ["-c", c]
        for r in reqs:
            args += ["-r", r[3:]] if r.startswith("-r:") else [r]
        procs[key] = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path_factory.mktemp("pip"),
        )
    results = {}
    for key, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=420)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail(f"resolving {SETS[key]} took over 420 s")
        err_lines = [line for line in err.splitlines() if "is ignored" not in line]
        assert proc.returncode == 0, f"images {SETS[key]} do not resolve:\n" + "\n".join(
            err_lines[-40:]
        )
        results[key] = json.loads(out)
    return results


def test_every_image_has_a_requirement_set() -> None:
    assert DOCKERFILES
    for (reqs, _), names in SETS.items():
        assert reqs, f"images {names}: no pip install found in their Dockerfiles"


@pytest.mark.slow
@pytest.mark.parametrize("key", list(SETS), ids=["+".join(v) for v in SETS.values()])
def test_image_dependencies_resolve(resolutions, key) -> None:
    report = resolutions[key]
    resolved = {
        re.sub(r"[-_.]+", "-", item["metadata"]["name"]).lower(): item["metadata"]["version"]
        for item in report["install"]
    }
    reqs, constraints = key
    # Every named requirement is in the resolution, at a version its specifier admits.
    for spec in reqs:
        if spec.startswith("-r:"):
            continue
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
    if not drift:
        pytest.skip("kubeloop/monitoring/Dockerfile is not there yet")
    resolved = {
        i["metadata"]["name"].lower(): i["metadata"]["version"]
        for i in resolutions[drift[0]]["install"]
    }
    assert "alibi-detect" in resolved and int(resolved["numpy"].split(".")[0]) < 2
