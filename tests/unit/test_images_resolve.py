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


def _produced_files(runs: list[str]) -> dict[str, str]:
    """Files a RUN writes with `python -c "..." > path` (e.g. the dependency list read from
    pyproject.toml), produced here by running the same command in the repository root,
    which is the build context the Dockerfile copied them from."""
    produced = {}
    for run in runs:
        for cmd in re.split(r"&&|;", run):
            m = re.match(r"^\s*(python3?\s+-c\s+.+?)\s*>\s*(\S+)\s*$", cmd, re.S)
            if not m:
                continue
            argv = shlex.split(m.group(1))
            argv[0] = sys.executable
            out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, f"{m.group(1)} failed: {out.stderr}"
            produced[m.group(2)] = out.stdout
    return produced


def _expand(item: str) -> list[str] | None:
    """A requirement, or the requirement lines of a `-r:` requirements file (None when the
    file holds pip options, which only pip itself reads)."""
    if not item.startswith("-r:"):
        return [item]
    lines = [line.split(" #")[0].strip() for line in Path(item[3:]).read_text().splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    return None if any(line.startswith("-") for line in lines) else lines


def requirement_set(dockerfile: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(requirements, constraint files) of every pip install in the Dockerfile."""
    reqs: list[str] = []
    constraints: list[str] = []
    runs = run_commands(dockerfile.read_text())
    produced = _produced_files(runs)
    for run in runs:
        for cmd in re.split(r"&&|;", run):
            tokens = shlex.split(cmd)
            if ">" in tokens:  # a redirect, e.g. the command producing a requirements file
                continue
            for i in range(len(tokens) - 1):
                if not (tokens[i].endswith("pip") and tokens[i + 1] == "install"):
                    continue
                args, skip = tokens[i + 2 :], None
                for j, arg in enumerate(args):
                    if skip == j:
                        continue
                    if arg in ("-r", "--requirement") and args[j + 1] in produced:
                        lines = produced[args[j + 1]].splitlines()
                        reqs += [
                            line.strip()
                            for line in lines
                            if line.strip() and not line.startswith("#")
                        ]
                        skip = j + 1
                    elif arg in ("-c", "--constraint", "-r", "--requirement"):
                        path = ROOT / args[j + 1]
                        assert path.exists(), (
                            f"{dockerfile}: {args[j + 1]} not found in the build context"
                        )
                        if arg in ("-c", "--constraint"):
                            constraints.append(str(path))
                        else:
                            # A requirements file stands for its lines (so images installing
                            # the same set share one resolution); one with pip options is
                            # handed to pip as a file.
                            lines = _expand(f"-r:{path}")
                            reqs += lines if lines is not None else [f"-r:{path}"]
                        skip = j + 1
                    elif arg in OPTIONS_WITH_VALUE:
                        skip = j + 1
                    elif arg.startswith("-"):
                        continue
                    elif arg == "." or arg.startswith(".["):
                        if "--no-deps" not in args:
                            extras = set(re.findall(r"[\w-]+", arg[1:]))
                            reqs += project_requirements(extras)
                    else:
                        reqs.append(arg)
    return tuple(dict.fromkeys(reqs)), tuple(dict.fromkeys(constraints))


DOCKERFILES = image_dockerfiles()
SETS: dict[tuple, list[str]] = {}
PARSE_ERRORS: dict[str, str] = {}
for _name, _path in sorted(DOCKERFILES.items()):
    try:
        SETS.setdefault(requirement_set(_path), []).append(_name)
    except AssertionError as _exc:  # reported by test_requirement_sets_parse
        PARSE_ERRORS[_name] = str(_exc)


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
        for r in reqs:
            args += ["-r", r[3:]] if r.startswith("-r:") else [r]
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


def test_requirement_sets_parse() -> None:
    assert not PARSE_ERRORS, PARSE_ERRORS


def test_every_image_has_a_requirement_set() -> None:
    assert DOCKERFILES
    for (reqs, _), names in SETS.items():
        assert reqs, f"images {names}: no pip install found in their Dockerfiles"


def test_requirements_files_are_read_from_the_build_context() -> None:
    """`pip install -r requirements/runtime.txt` in the templated Dockerfiles stands for
    that file's lines, which are pyproject.toml's dependencies."""
    from kubeloop.images_docker import IMAGES, TORCH

    deps = project_requirements(set())
    runtime = ROOT / "requirements/runtime.txt"
    assert _expand(f"-r:{runtime}") == deps
    for name, spec in IMAGES.items():
        assert f"-r {runtime.relative_to(ROOT)}" in DOCKERFILES[name].read_text(), name
        reqs, constraints = requirement_set(DOCKERFILES[name])
        wanted = [TORCH, *deps, *spec.extra_requirements]  # CPU torch first, then the file
        assert list(reqs) == list(dict.fromkeys(wanted)), name
        assert constraints == (str(ROOT / "requirements/constraints.txt"),), name
    # The stage images without extras, the operator and the predictor share one resolution.
    shared = next(names for names in SETS.values() if "operator" in names)
    assert {"train", "ingest", "operator"} <= set(shared)


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
    # Every named requirement, including each line of a requirements file (`-r`), is in
    # the resolution at a version its specifier admits.
    for spec in [r for item in reqs for r in (_expand(item) or [])]:
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
    report = resolutions[drift[0]]
    assert isinstance(report, dict), f"the drift image does not resolve:\n{report}"
    resolved = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in report["install"]}
    assert "alibi-detect" in resolved and int(resolved["numpy"].split(".")[0]) < 2
