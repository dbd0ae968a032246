"""The one place that names kubeloop's container images and what they are built from.

Components (``base_image``), KServe InferenceService templates and the Helm chart all
call :func:`image`, so bumping the registry or the release tag is a one-line change.
Every image is the target of the same name in the repository's one ``Dockerfile``;
``make images`` builds them all. The images install their third-party dependencies from
the requirement files written here (``make compile``, checked by ``make check-generated``)
under ``requirements/constraints.txt``, before any source is copied.
"""

from __future__ import annotations

import re
import tomllib

REGISTRY = "ghcr.io/kubeloop"
TAG = "0.1.0"

DOCKERFILE = "Dockerfile"
STAGES: tuple[str, ...] = (
    "ingest",
    "validate",
    "features",
    "train",
    "evaluate",
    "gate",
    "register",
)
# Every image kubeloop builds; each name is also its target in DOCKERFILE.
IMAGES: tuple[str, ...] = (*STAGES, "predictor", "drift", "operator")

# Pipeline stages that add nothing to the common stage image (a bare
# ``FROM pipeline-stage AS <name>`` in DOCKERFILE): one image under each name, so
# ``make images`` builds PIPELINE_STAGE once and tags it with all of them.
PIPELINE_STAGE = "pipeline-stage"
BARE_STAGES: tuple[str, ...] = ("ingest", "validate", "train", "evaluate", "gate", "register")

CONSTRAINTS = "requirements/constraints.txt"
RUNTIME_REQUIREMENTS = "requirements/runtime.txt"
OPERATOR_REQUIREMENTS = "requirements/operator.txt"
# Cluster Feast (feature_repo/feature_store.cluster.yaml: Redis online store, S3 registry),
# for the features stage and the predictor image, which also runs the chart's Feast server.
CLUSTER_EXTRAS = {"feast": "redis,aws"}
# What `python -m kubeloop.operators.cluster` imports (kopf, the Kubernetes and KFP
# clients, the kserve SDK's InferenceService models, the registry's minio, settings),
# plus kfp-kubernetes: the chart's upload Job compiles the pipeline in this image, and
# typer and rich: its bucket Job runs `kubeloop registry ensure-bucket`. No torch, no ray.
OPERATOR_DISTRIBUTIONS: tuple[str, ...] = (
    "kopf",
    "kserve",
    "kubernetes",
    "kfp",
    "kfp-kubernetes",
    "minio",
    "pydantic",
    "pydantic-settings",
    "httpx",
    "prometheus-client",
    "pyyaml",
    "typer",
    "rich",
)

_NAME_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_SOURCE = "kubeloop.images, from pyproject.toml"


def image(name: str, registry: str = REGISTRY, tag: str = TAG) -> str:
    """Full reference of a kubeloop image, e.g. ``image("ingest")`` →
    ``ghcr.io/kubeloop/kubeloop-ingest:0.1.0``; ``registry`` and ``tag`` name a release's
    own copies (the chart's ``global.imageRegistry``)."""
    if not _NAME_RE.match(name):
        raise ValueError(f"image name must be lowercase words joined by '-', got {name!r}")
    if not registry or registry.endswith("/") or not tag:
        raise ValueError(f"image registry and tag must be set, got {registry!r} and {tag!r}")
    return f"{registry}/kubeloop-{name}:{tag}"


def target(name: str) -> str:
    """The ``Dockerfile`` target that builds image ``name``."""
    if name not in IMAGES:
        raise ValueError(f"no image {name!r}; kubeloop builds {list(IMAGES)}")
    return name


def build_plan(suffix: str = "") -> list[tuple[str, list[str]]]:
    """``[(Dockerfile target, [image references])]``: one build per distinct image, every
    reference ``image(name) + suffix`` (e.g. ``-cu126`` for another torch variant)."""
    plan = [(PIPELINE_STAGE, [image(n) + suffix for n in BARE_STAGES])]
    plan += [(target(n), [image(n) + suffix]) for n in IMAGES if n not in BARE_STAGES]
    return plan


def _canonical(requirement: str) -> str:
    name = re.split(r"[\[<>=!~;\s]", requirement, maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def _with_cluster_extras(spec: str) -> str:
    extras = CLUSTER_EXTRAS.get(_canonical(spec))
    if not extras:
        return spec
    name = re.match(r"[A-Za-z0-9_.\-]+", spec).group(0)
    return f"{name}[{extras}]{spec[len(name) :]}"


def requirement_files() -> dict[str, str]:
    """``{path: text}``: the images' requirement files, from pyproject's dependencies.

    ``requirements/runtime.txt`` is every dependency (Feast with its cluster extras), for
    the predictor and the pipeline stages; ``requirements/operator.txt`` is the subset
    the operator imports.
    """
    from kubeloop.generated import GENERATED_HEADER, REPO_ROOT

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    deps = {_canonical(d): d for d in project["dependencies"]}
    if not deps:
        raise ValueError("pyproject.toml declares no [project] dependencies")
    missing = [d for d in OPERATOR_DISTRIBUTIONS if d not in deps]
    if missing:
        raise ValueError(f"the operator needs {missing}, which pyproject.toml does not declare")
    runtime = [_with_cluster_extras(spec) for spec in deps.values()]
    header = GENERATED_HEADER.format(source=_SOURCE)
    return {
        RUNTIME_REQUIREMENTS: "\n".join(
            [
                header,
                "# kubeloop's runtime dependencies (Feast with its cluster extras), installed",
                f"# by the {DOCKERFILE}'s shared dependency stage under {CONSTRAINTS}.",
                *runtime,
            ]
        )
        + "\n",
        OPERATOR_REQUIREMENTS: "\n".join(
            [
                header,
                "# What the operator image needs at import (no torch, no ray), installed",
                f"# under {CONSTRAINTS}.",
                *(deps[d] for d in OPERATOR_DISTRIBUTIONS),
            ]
        )
        + "\n",
    }
