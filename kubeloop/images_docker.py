"""The Dockerfiles of the pipeline-stage images and the operator image, from one template.

The images differ only in data (:data:`IMAGES`): what the image is for, extra
requirements (the features stage's cluster Feast extras), extra files, environment and
entrypoint. Every one installs its third-party dependencies from files that change only
when the dependencies do — ``requirements/runtime.txt`` (pyproject's dependencies,
generated here) under ``requirements/constraints.txt`` — before any source is copied, then
kubeloop itself with ``--no-deps``; editing kubeloop's source reuses the dependency layers.

Registered in ``kubeloop.generated.GENERATORS``: ``make compile`` writes the files and
``make check-generated`` fails when one differs from what this module produces.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field

from kubeloop.generated import GENERATED_HEADER, REPO_ROOT
from kubeloop.images import image

RUNTIME_REQUIREMENTS = "requirements/runtime.txt"
CONSTRAINTS = "requirements/constraints.txt"
TORCH = "torch==2.13.0"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
SOURCE = "kubeloop.images_docker"
STAGE_ENTRYPOINT = ("python", "-m", "kubeloop.cli.main")


@dataclass(frozen=True)
class ImageSpec:
    """One image's differences from the template."""

    dockerfile: str
    purpose: str
    extra_requirements: tuple[str, ...] = ()
    extra_requirements_why: str = ""
    # (source in the build context, destination, why) copied into the final stage.
    files: tuple[tuple[str, str, str], ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    entrypoint: tuple[str, ...] = STAGE_ENTRYPOINT
    cmd: tuple[str, ...] | None = ("--help",)
    entrypoint_why: str = (
        "KFP replaces the command with the component's own; by hand the image runs the CLI."
    )
    expose: tuple[int, ...] = ()
    expose_why: str = ""
    torch_why: str = "CPU torch from its own index: PyPI's default build pulls gigabytes of CUDA."


_STAGE_ENV = {"KUBELOOP_HOME": "/tmp/kubeloop"}

IMAGES: dict[str, ImageSpec] = {
    "ingest": ImageSpec(
        "components/ingest/Dockerfile",
        "the ingest pipeline stage, which snapshots a time window of a source "
        "(local, s3://, example://) as a versioned dataset.",
        env=_STAGE_ENV,
    ),
    "validate": ImageSpec(
        "components/validate/Dockerfile",
        "the validate pipeline stage, which runs pandera and kubeloop's data checks and "
        "writes the report and serving schema.",
        env=_STAGE_ENV,
    ),
    "features": ImageSpec(
        "components/features/Dockerfile",
        "the features pipeline stage, which joins Feast feature-view features point-in-time "
        "and splits train/eval by event time.",
        extra_requirements=("feast[redis,aws]==0.67.0",),
        extra_requirements_why=(
            "Cluster Feast (feature_repo/feature_store.cluster.yaml): Redis online store, "
            "S3 registry."
        ),
        files=(
            (
                "feature_repo",
                "/app/feature_repo",
                "The Feast definitions; the stage copies them into a fresh folder per run.",
            ),
        ),
        env={**_STAGE_ENV, "KUBELOOP_FEAST_REPO": "/app/feature_repo"},
    ),
    "train": ImageSpec(
        "components/train/Dockerfile",
        "the train pipeline stage, which fits the fraud classifier with Ray Train "
        "(TorchTrainer) and writes a model bundle.",
        env=_STAGE_ENV,
    ),
    "evaluate": ImageSpec(
        "components/evaluate/Dockerfile",
        "the evaluate pipeline stage: metrics, calibration, slices, HTML report and the "
        "reference sample.",
        env=_STAGE_ENV,
    ),
    "gate": ImageSpec(
        "components/gate/Dockerfile",
        "the gate pipeline stage: objectives, then the champion scored on the same "
        "evaluation window.",
        env=_STAGE_ENV,
    ),
    "register": ImageSpec(
        "components/register/Dockerfile",
        "the register pipeline stage, which publishes an immutable registry version with lineage.",
        env=_STAGE_ENV,
    ),
    "operator": ImageSpec(
        "operators/Dockerfile",
        "the kopf operator that reconciles ModelDeployments (canary analysis, promotion, "
        "rollback, drift-triggered retraining); replicas elect a leader on a Lease.",
        entrypoint=("python", "-m", "kubeloop.operators.cluster"),
        cmd=None,
        entrypoint_why="",
        expose=(8080, 8081),
        expose_why="8080: /healthz on every replica; 8081: /metrics (kubeloop_rollout_*).",
        torch_why="CPU torch from its own index: the operator never trains, but kubeloop "
        "depends on torch.",
    ),
}


def runtime_requirements() -> str:
    """pyproject.toml's ``[project] dependencies``, one per line."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    deps = list(project["dependencies"])
    if not deps:
        raise ValueError("pyproject.toml declares no [project] dependencies")
    header = GENERATED_HEADER.format(source=f"{SOURCE}, from pyproject.toml")
    note = (
        "# kubeloop's runtime dependencies; images install them under "
        f"{CONSTRAINTS} before copying any source."
    )
    return "\n".join([header, note, *deps]) + "\n"


def _wrap(words: str, width: int = 88) -> list[str]:
    lines, line = [], "#"
    for word in words.split():
        if len(line) + 1 + len(word) > width and line != "#":
            lines.append(line)
            line = "#"
        line += " " + word
    lines.append(line)
    return lines


def _json_argv(argv: tuple[str, ...]) -> str:
    return "[" + ", ".join(f'"{a}"' for a in argv) + "]"


def dockerfile(name: str) -> str:
    """The Dockerfile of image ``name`` (a key of :data:`IMAGES`)."""
    if name not in IMAGES:
        raise ValueError(f"no Dockerfile template for image {name!r}; known: {sorted(IMAGES)}")
    spec = IMAGES[name]
    ref = image(name)
    deps = " ".join(
        [f"-c {CONSTRAINTS}", f"-r {RUNTIME_REQUIREMENTS}"]
        + [f'"{r}"' for r in spec.extra_requirements]
    )
    out = [
        "# syntax=docker/dockerfile:1",
        GENERATED_HEADER.format(source=SOURCE),
        *_wrap(f"{ref} (the name comes from kubeloop.images.image({name!r})): {spec.purpose}"),
        "# Build from the repository root:",
        f"#   docker build -f {spec.dockerfile} -t {ref} .",
        "",
        "FROM python:3.11-slim AS build",
        "ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1",
        "RUN python -m venv /opt/venv",
        "ENV PATH=/opt/venv/bin:$PATH",
        "WORKDIR /src",
        *_wrap(spec.torch_why),
        f'RUN pip install --index-url {TORCH_CPU_INDEX} "{TORCH}"',
        "# Third-party dependencies from files that change only when dependencies do, before",
        "# any source: editing kubeloop's source keeps these layers cached.",
        f"COPY {CONSTRAINTS} {RUNTIME_REQUIREMENTS} requirements/",
    ]
    if spec.extra_requirements_why:
        out += _wrap(spec.extra_requirements_why)
    out += [
        f"RUN pip install {deps}",
        "COPY pyproject.toml setup.py README.md ./",
        "COPY kubeloop kubeloop",
        "COPY components components",
        "COPY pipelines pipelines",
        "COPY operators operators",
        "# kubeloop itself; its dependencies are installed above.",
        f"RUN pip install --no-deps -c {CONSTRAINTS} .",
        "",
        "FROM python:3.11-slim",
        "RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin kubeloop",
        "COPY --from=build /opt/venv /opt/venv",
    ]
    for src, dest, why in spec.files:
        out += [*_wrap(why), f"COPY --chown=10001:10001 {src} {dest}"]
    env = {"PATH": "/opt/venv/bin:$PATH", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
    env.update(spec.env)
    pairs = [f"{k}={v}" for k, v in env.items()]
    out.append("ENV " + " \\\n    ".join(pairs))
    out += ["WORKDIR /app", "USER 10001"]
    if spec.expose:
        out.append("EXPOSE " + " ".join(str(p) for p in spec.expose))
        if spec.expose_why:
            out += _wrap(spec.expose_why)
    if spec.entrypoint_why:
        out += _wrap(spec.entrypoint_why)
    out.append(f"ENTRYPOINT {_json_argv(spec.entrypoint)}")
    if spec.cmd:
        out.append(f"CMD {_json_argv(spec.cmd)}")
    return "\n".join(out) + "\n"


def generate() -> dict[str, str]:
    """``{path: text}``: every templated Dockerfile and ``requirements/runtime.txt``."""
    files = {spec.dockerfile: dockerfile(name) for name, spec in IMAGES.items()}
    files[RUNTIME_REQUIREMENTS] = runtime_requirements()
    return files
