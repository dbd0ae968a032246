"""Every image's Dockerfile follows the image posture, and image names come from one place.

Posture: multi-stage; base images with an explicit version tag; dependencies installed
before the source is copied; pip installs pinned (constraints or ==); a non-root numeric
USER in the final stage; an exec-form ``python -m`` entrypoint; nothing fetched with
curl/wget/ADD URL. Names: the chart's image values and Chart.yaml follow
``kubeloop.images`` (REGISTRY, TAG, ``image(name)``).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from kubeloop import images

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kubeloop"


def image_dockerfiles() -> dict[str, Path]:
    """image name → Dockerfile, by the layout rule the Makefile's `images` target uses."""
    found = {p.parent.name: p for p in sorted(ROOT.glob("components/*/Dockerfile"))}
    for name, rel in (
        ("predictor", "kubeloop/serving/Dockerfile"),
        ("drift", "kubeloop/monitoring/Dockerfile"),
        ("operator", "operators/Dockerfile"),
    ):
        if (ROOT / rel).exists():
            found[name] = ROOT / rel
    return found


DOCKERFILES = image_dockerfiles()
SOURCE_DIRS = ("kubeloop", "components", "pipelines", "operators", "feature_repo", ".")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse_dockerfile(text: str) -> list[Stage]:
    """Instructions grouped by stage; continuation lines joined, comments dropped."""
    logical, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    stages: list[Stage] = []
    for line in logical:
        instr, _, args = line.partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            parts = args.split()
            parts = [p for p in parts if not p.startswith("--platform")]
            name = parts[2] if len(parts) >= 3 and parts[1].lower() == "as" else None
            stages.append(Stage(parts[0], name))
        elif instr != "ARG" or stages:
            assert stages, f"instruction {instr} before FROM"
            stages[-1].instructions.append((instr, args.strip()))
    return stages


def pip_installs(args: str) -> list[list[str]]:
    """Argument lists of every `pip install` in a RUN command."""
    found = []
    for cmd in re.split(r"&&|;|\|\|", args):
        tokens = shlex.split(cmd)
        for i in range(len(tokens) - 1):
            if tokens[i].endswith("pip") and tokens[i + 1] == "install":
                found.append(tokens[i + 2 :])
    return found


OPTIONS_WITH_VALUE = {
    "-c", "--constraint", "-r", "--requirement", "-i", "--index-url", "--extra-index-url",
    "-f", "--find-links", "--target", "-t", "--prefix", "--root", "--platform",
}  # fmt: skip


def pip_targets(pip_args: list[str]) -> list[str]:
    """The requirement specifiers of one `pip install` (option values skipped)."""
    targets, skip = [], False
    for arg in pip_args:
        if skip:
            skip = False
        elif arg in OPTIONS_WITH_VALUE:
            skip = True
        elif not arg.startswith("-"):
            targets.append(arg)
    return targets


def posture_problems(path: Path) -> list[str]:
    stages = parse_dockerfile(path.read_text())
    problems = []
    if len(stages) < 2:
        problems.append("not multi-stage")
    stage_names = {s.name for s in stages if s.name}
    for s in stages:
        if s.base in stage_names:
            continue
        ref = s.base.split("@")[0]
        tag = ref.rsplit(":", 1)[1] if ":" in ref.rsplit("/", 1)[-1] else ""
        if "@sha256:" not in s.base and (not tag or tag == "latest" or not re.match(r"\d", tag)):
            problems.append(f"base image {s.base} has no version tag")
    for s in stages:
        source_copied = False
        deps_installed = False  # a requirements file (or named requirements) installed
        for instr, args in s.instructions:
            if instr == "ADD" and re.search(r"https?://", args):
                problems.append("ADD from a URL")
            if instr == "RUN" and re.search(r"\b(curl|wget)\b", args):
                problems.append("downloads with curl/wget")
            if instr == "COPY" and not args.startswith("--from"):
                srcs = [a for a in shlex.split(args) if not a.startswith("--")][:-1]
                if any(src.rstrip("/") in SOURCE_DIRS for src in srcs):
                    source_copied = True
            if instr == "RUN":
                for pip_args in pip_installs(args):
                    targets = pip_targets(pip_args)
                    pinned = "-c" in pip_args or "-r" in pip_args or "--constraint" in pip_args
                    if not pinned and not all("==" in t for t in targets if t not in (".",)):
                        problems.append(f"unpinned pip install {' '.join(pip_args)}")
                    project = [t for t in targets if t == "." or t.startswith(".[")]
                    if source_copied and "--no-deps" not in pip_args:
                        # Any resolution after `COPY kubeloop` reruns on every source edit.
                        problems.append("dependencies installed after the source is copied")
                    if project and "--no-deps" in pip_args and not deps_installed:
                        problems.append(
                            "the project is installed --no-deps, its dependencies never"
                        )
                    if "-r" in pip_args or "--requirement" in pip_args:
                        deps_installed = True
    final = stages[-1] if stages else None
    if final:
        users = [a for i, a in final.instructions if i == "USER"]
        if not users or not re.match(r"^[1-9][0-9]{3,}(:[0-9]+)?$", users[-1]):
            problems.append(
                f"final stage USER must be a non-root numeric uid, got {users[-1:] or None}"
            )
        entry = [a for i, a in final.instructions if i == "ENTRYPOINT"]
        try:
            argv = json.loads(entry[-1]) if entry else None
        except json.JSONDecodeError:
            argv = None
        if not argv or argv[:2] != ["python", "-m"]:
            problems.append(f"ENTRYPOINT must be exec-form python -m, got {entry[-1:] or None}")
    return problems


def test_every_image_has_a_dockerfile() -> None:
    assert DOCKERFILES, "no image Dockerfiles found"
    for name in DOCKERFILES:
        images.image(name)  # the name is a valid image name


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_posture(name: str) -> None:
    path = DOCKERFILES[name]
    rel = path.relative_to(ROOT).as_posix()
    assert posture_problems(path) == [], rel


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_names_its_image(name: str) -> None:
    text = DOCKERFILES[name].read_text()
    assert images.image(name) in text, f"{DOCKERFILES[name]} should name {images.image(name)}"


def test_posture_checker_catches_bad_dockerfiles(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "FROM python:latest\nCOPY kubeloop kubeloop\nRUN pip install --no-deps .\n"
        "RUN pip install . && pip install requests\n"
        "RUN curl -sSL https://example.invalid/x | sh\nUSER root\nCMD python app.py\n"
    )
    problems = " | ".join(posture_problems(bad))
    for expected in (
        "not multi-stage",
        "its dependencies never",
        "no version tag",
        "installed after the source",
        "unpinned pip install requests",
        "curl/wget",
        "non-root numeric uid",
        "python -m",
    ):
        assert expected in problems, expected


def test_chart_image_values_follow_kubeloop_images() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert values["global"]["imageRegistry"] == images.REGISTRY
    assert chart["appVersion"] == images.TAG
    for key, name in (
        ("operator", "operator"),
        ("drift", "drift"),
        ("feast", "predictor"),
        ("tests", "operator"),
    ):
        img = values[key]["image"]
        ref = f"{values['global']['imageRegistry']}/{img['repository']}:{img['tag']}"
        assert ref == images.image(name), (
            f"values.{key}.image is {ref}, kubeloop.images says {images.image(name)}"
        )


def test_make_images_says_when_no_engine_is_present() -> None:
    import subprocess

    proc = subprocess.run(
        ["make", "-s", "images", "IMAGE_ENGINE="],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "no image engine here" in proc.stdout and "nothing built" in proc.stdout


def test_dependency_install_comes_before_the_source(tmp_path: Path) -> None:
    """A requirements file installed after `COPY kubeloop` is the layer-cache miss the
    templated Dockerfiles avoid; the same lines in the right order pass."""
    head = "FROM python:3.11-slim AS build\n"
    deps = "COPY requirements/runtime.txt requirements/\nRUN pip install -c c.txt -r requirements/runtime.txt\n"
    src = "COPY kubeloop kubeloop\nRUN pip install --no-deps .\n"
    tail = 'FROM python:3.11-slim\nUSER 10001\nENTRYPOINT ["python", "-m", "x"]\n'
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text(head + deps + src + tail)
    bad.write_text(head + src + deps + tail)
    assert posture_problems(good) == []
    assert "dependencies installed after the source is copied" in posture_problems(bad)


def test_templated_dockerfiles_are_current_and_install_dependencies_first() -> None:
    from kubeloop import images_docker

    generated = images_docker.generate()
    for rel, text in generated.items():
        assert (ROOT / rel).read_text() == text, f"{rel} is stale: run `make compile`"
    for name, spec in images_docker.IMAGES.items():
        assert DOCKERFILES[name] == ROOT / spec.dockerfile
        lines = (ROOT / spec.dockerfile).read_text().splitlines()
        deps = next(i for i, line in enumerate(lines) if "-r requirements/runtime.txt" in line)
        source = lines.index("COPY kubeloop kubeloop")
        assert deps < source, f"{spec.dockerfile}: dependencies after the source"
        assert (
            lines[source:].count("RUN pip install --no-deps -c requirements/constraints.txt .") == 1
        )
    # Per-image differences are data: only features installs the cluster Feast extras.
    features = (ROOT / "components/features/Dockerfile").read_text()
    assert '"feast[redis,aws]==0.67.0"' in features
    assert (
        sum("feast[redis,aws]" in generated[s.dockerfile] for s in images_docker.IMAGES.values())
        == 1
    )


def test_runtime_requirements_are_pyprojects_dependencies() -> None:
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    lines = (ROOT / "requirements/runtime.txt").read_text().splitlines()
    assert [line for line in lines if line and not line.startswith("#")] == deps
    assert lines[0].startswith("# Generated by kubeloop")


def test_unknown_image_template_is_refused() -> None:
    from kubeloop import images_docker

    with pytest.raises(ValueError, match="no Dockerfile template for image 'nope'"):
        images_docker.dockerfile("nope")
