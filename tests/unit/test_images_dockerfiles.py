"""The one Dockerfile builds every image of ``kubeloop.images`` with the image posture.

Posture: ``ARG BASE_IMAGE`` (a version-tagged default) is the base of every root stage;
dependencies are installed from requirement files before any source is copied, every pip
install is pinned, and package-index settings come in as build secrets, never as files
in a layer; each final stage is slim (no pip, no compilers, copies only from build
stages), runs as a non-root numeric uid and has an exec-form ``python -m`` entrypoint;
the operator's environment holds neither torch nor ray. Names: the chart's image values
and Chart.yaml follow ``kubeloop.images``.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
import subprocess
import sys
import textwrap
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from kubeloop import images

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kubeloop"
DOCKERFILE = ROOT / images.DOCKERFILE
SOURCE_DIRS = {"kubeloop", "components", "pipelines", "operators", "."}
SECRET_FILES = re.compile(r"pip\.conf|pip\.ini|\.netrc|\.crt\b|\.pem\b|ca-certificates|certs/?$")
ENTRYPOINTS = {
    **{stage: "kubeloop.cli.main" for stage in images.STAGES},
    "predictor": "kubeloop.serving.predictor",
    "drift": "kubeloop.drift",
    "operator": "kubeloop.operators.cluster",
}


# ------------------------------------------------------------------ a tiny parser


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, instr: str) -> list[str]:
        return [a for i, a in self.instructions if i == instr]


@dataclass
class Dockerfile:
    args: dict[str, str]  # global ARGs (before the first FROM) and their defaults
    stages: dict[str, Stage]

    def chain(self, name: str) -> list[Stage]:
        """The stage and the stages it is FROM, base first."""
        out = []
        while name in self.stages:
            out.insert(0, self.stages[name])
            name = self.stages[name].base
        return out

    def closure(self, name: str) -> list[Stage]:
        """Every stage a target builds: its FROM chain and, recursively, the stages
        it copies or mounts from."""
        seen: dict[str, Stage] = {}
        todo = [name]
        while todo:
            for stage in self.chain(todo.pop()):
                if stage.name in seen:
                    continue
                seen[stage.name] = stage
                todo += [src for src in copy_sources(stage) if src in self.stages]
        return list(seen.values())

    def effective(self, name: str, instr: str) -> str | None:
        values = [a for s in self.chain(name) for a in s.args(instr)]
        return values[-1] if values else None


def parse_dockerfile(text: str) -> Dockerfile:
    """Instructions grouped by stage; continuation lines joined, comments dropped."""
    logical, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not buf and not line):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    assert not buf, "the Dockerfile ends in a continuation line"
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in logical:
        instr, _, rest = line.partition(" ")
        instr, rest = instr.upper(), rest.strip()
        if instr == "FROM":
            parts = [p for p in rest.split() if not p.startswith("--platform")]
            assert len(parts) == 3 and parts[1].lower() == "as", f"unnamed stage: {line}"
            assert parts[2] not in stages, f"stage {parts[2]} defined twice"
            current = stages[parts[2]] = Stage(parts[0], parts[2])
        elif current is None:
            assert instr == "ARG", f"{instr} before the first FROM"
            key, _, default = rest.partition("=")
            args[key] = default
        else:
            current.instructions.append((instr, rest))
    return Dockerfile(args, stages)


def is_build_context(stage: Stage) -> bool:
    """An empty ``FROM scratch`` stage: a named context a build may replace
    (``--build-context NAME=folder``), mounted, never copied into a layer."""
    return stage.base == "scratch" and not stage.instructions


def copy_sources(stage: Stage) -> list[str]:
    """Stages (or images) a stage copies from or bind-mounts."""
    found = [m for a in stage.args("COPY") for m in re.findall(r"--from=(\S+)", a)]
    found += [m for a in stage.args("RUN") for m in re.findall(r"\bfrom=([^,\s]+)", a)]
    return found


def run_mounts(args: str) -> tuple[list[dict[str, str]], str]:
    """(the --mount options, the command) of a RUN."""
    mounts = []
    while args.startswith("--mount="):
        opt, _, args = args.partition(" ")
        mounts.append(dict(kv.partition("=")[::2] for kv in opt[len("--mount=") :].split(",")))
        args = args.lstrip()
    return mounts, args


def pip_commands(args: str) -> list[tuple[str, list[str]]]:
    """(``install`` or ``wheel``, arguments) of every pip command in a RUN."""
    found = []
    for cmd in re.split(r"&&|;|\|\|", run_mounts(args)[1]):
        tokens = shlex.split(cmd)
        for i in range(len(tokens) - 1):
            if tokens[i].split("/")[-1] in ("pip", "pip3") and tokens[i + 1] in (
                "install",
                "wheel",
            ):
                found.append((tokens[i + 1], tokens[i + 2 :]))
    return found


OPTIONS_WITH_VALUE = {
    "-c", "--constraint", "-r", "--requirement", "-i", "--index-url", "--extra-index-url",
    "-f", "--find-links", "--target", "-t", "--prefix", "--root", "--platform", "-w",
    "--wheel-dir",
}  # fmt: skip


def pip_targets(pip_args: list[str]) -> list[str]:
    """The requirement specifiers of one pip command (option values skipped)."""
    targets, skip = [], False
    for arg in pip_args:
        if skip:
            skip = False
        elif arg in OPTIONS_WITH_VALUE:
            skip = True
        elif not arg.startswith(("-", "$")):  # "$..." expands to options, e.g. ${X:+--opt "$X"}
            targets.append(arg)
    return targets


def option_values(pip_args: list[str], *names: str) -> list[str]:
    return [pip_args[i + 1] for i, a in enumerate(pip_args[:-1]) if a in names]


def requirement_lines(rel: str) -> list[str]:
    """The requirements a requirements file names (nested ``-r`` files followed)."""
    out = []
    for line in (ROOT / rel).read_text().splitlines():
        line = line.split(" #")[0].strip()
        if line.startswith(("-r ", "--requirement ")):
            out += requirement_lines(str(Path(rel).parent / line.split()[1]))
        elif line and not line.startswith(("#", "-")):
            out.append(line)
    return out


def canonical(requirement: str) -> str:
    name = re.split(r"[\[<>=!~;@\s]", requirement.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_requirements(df: Dockerfile, target: str) -> list[str]:
    """Every requirement pip installs while building ``target``, requirement files expanded."""
    reqs = []
    for stage in df.closure(target):
        for run in stage.args("RUN"):
            for verb, pip_args in pip_commands(run):
                if verb != "install":
                    continue
                for rel in option_values(pip_args, "-r", "--requirement"):
                    reqs += requirement_lines(rel)
                reqs += [t for t in pip_targets(pip_args) if not t.startswith(("/", "."))]
    return reqs


# ------------------------------------------------------------------ the posture


def posture_problems(df: Dockerfile, target: str) -> list[str]:
    """What is wrong with one target (empty when the posture holds)."""
    problems = []
    if target not in df.stages:
        return [f"no target {target}"]
    chain = df.chain(target)
    # Root stages: FROM ${BASE_IMAGE} with a version-tagged default.
    for stage in df.closure(target):
        if stage.base in df.stages or is_build_context(stage):
            continue
        if stage.base not in ("${BASE_IMAGE}", "$BASE_IMAGE"):
            problems.append(f"stage {stage.name} is FROM {stage.base}, not ${{BASE_IMAGE}}")
    base = df.args.get("BASE_IMAGE", "")
    tag = base.rsplit(":", 1)[1] if ":" in base.rsplit("/", 1)[-1] else ""
    if "@sha256:" not in base and not re.match(r"\d", tag):
        problems.append(f"ARG BASE_IMAGE default {base!r} has no version tag")
    # Build stages: dependencies before the source, pinned, index settings as secrets.
    for stage in df.closure(target):
        source_copied = any(
            src in SOURCE_DIRS for s in df.chain(stage.name)[:-1] for src in copied_paths(s)
        )
        for instr, args in stage.instructions:
            if instr == "ADD":
                problems.append(f"{stage.name}: ADD (use COPY; nothing is fetched by URL)")
            if instr == "RUN" and re.search(r"\b(curl|wget)\b", args):
                problems.append(f"{stage.name}: downloads with curl/wget")
            if instr == "COPY" and not args.startswith("--from"):
                paths = copied_paths_of(args)
                if any(SECRET_FILES.search(p) for p in paths):
                    problems.append(f"{stage.name}: copies index settings into a layer: {args}")
                source_copied |= any(p in SOURCE_DIRS for p in paths)
            if instr != "RUN":
                continue
            mounts, _ = run_mounts(args)
            secrets = {m.get("id") for m in mounts if m.get("type") == "secret"}
            for verb, pip_args in pip_commands(args):
                targets = pip_targets(pip_args)
                local = all(t.startswith(("/", ".")) for t in targets)
                if "--no-deps" not in pip_args and source_copied:
                    problems.append(f"{stage.name}: dependencies installed after the source")
                if not (local and "--no-deps" in pip_args):
                    pinned = {"-c", "-r", "--constraint", "--requirement"} & set(pip_args)
                    if not pinned and not all("==" in t for t in targets if t != "."):
                        problems.append(f"{stage.name}: unpinned pip {verb} {' '.join(pip_args)}")
                reaches_index = verb == "wheel" or not local
                if reaches_index and not {"pipconf", "cacert"} <= secrets:
                    problems.append(f"{stage.name}: pip {verb} without the pipconf/cacert secrets")
    # The final stage: slim, non-root, python -m.
    build = {s.name for s in df.closure(target)} - {s.name for s in chain}
    for stage in chain:
        for instr, args in stage.instructions:
            if instr == "RUN" and (pip_commands(args) or re.search(r"apt-get|apk |gcc", args)):
                problems.append(f"{stage.name}: installs in the final image: {args}")
            if instr == "COPY":
                sources = re.findall(r"--from=(\S+)", args)
                if not sources or sources[0] not in build:
                    problems.append(f"{stage.name}: final stage copies from outside a build stage")
    user = df.effective(target, "USER")
    if not user or not re.match(r"^[1-9][0-9]{3,}(:[0-9]+)?$", user):
        problems.append(f"final stage USER must be a non-root numeric uid, got {user}")
    entry = df.effective(target, "ENTRYPOINT")
    try:
        argv = json.loads(entry) if entry else None
    except json.JSONDecodeError:
        argv = None
    if not argv or argv[:2] != ["python", "-m"]:
        problems.append(f"ENTRYPOINT must be exec-form python -m, got {entry}")
    return problems


def copied_paths_of(args: str) -> list[str]:
    return [p.rstrip("/") or "/" for p in shlex.split(args) if not p.startswith("--")][:-1]


def copied_paths(stage: Stage) -> list[str]:
    return [p for a in stage.args("COPY") if not a.startswith("--from") for p in copied_paths_of(a)]


DF = parse_dockerfile(DOCKERFILE.read_text())


# ------------------------------------------------------------------ tests


def test_every_image_has_a_target() -> None:
    assert set(images.IMAGES) <= set(DF.stages), set(images.IMAGES) - set(DF.stages)
    for name in images.IMAGES:
        assert images.target(name) == name
        images.image(name)  # a valid image name
    with pytest.raises(ValueError, match="no image 'nope'"):
        images.target("nope")


def test_base_image_is_an_argument() -> None:
    assert DF.args["BASE_IMAGE"] == "python:3.11-slim"
    roots = {s.name for s in DF.stages.values() if s.base not in DF.stages}
    assert roots == {"build-base", "runtime", "local-wheels"}
    assert all(DF.stages[r].base == "${BASE_IMAGE}" for r in roots - {"local-wheels"})
    # The local wheel folder: empty unless the build is given one, and only ever mounted.
    assert is_build_context(DF.stages["local-wheels"])
    for stage in DF.stages.values():
        assert not any("local-wheels" in a for a in stage.args("COPY")), stage.name
        for run in stage.args("RUN"):
            if "id=pipconf" in run:  # a pip run that reaches an index
                mounts, _ = run_mounts(run)
                assert {"type": "bind", "from": "local-wheels", "target": "/run/wheels"} in mounts


@pytest.mark.parametrize("name", images.IMAGES)
def test_target_posture(name: str) -> None:
    assert posture_problems(DF, name) == []


@pytest.mark.parametrize("name", images.IMAGES)
def test_entrypoints(name: str) -> None:
    argv = json.loads(DF.effective(name, "ENTRYPOINT"))
    assert argv[2] == ENTRYPOINTS[name]
    # KFP replaces the pipeline stages' command; every final stage is a slim runtime.
    assert DF.chain(name)[0].name == "runtime"
    assert "build-base" not in {s.name for s in DF.chain(name)}


def test_pipeline_stages_and_predictor_share_one_environment() -> None:
    def copied_from(name: str, path: str) -> str:
        copies = [a for s in DF.chain(name) for a in s.args("COPY") if a.split()[-2] == path]
        assert len(copies) == 1, (name, path, copies)
        return re.search(r"--from=(\S+)", copies[0]).group(1)

    # The environment first, kubeloop (installed under /opt/kubeloop as from /) after it:
    # a source edit leaves the environment's layer alone.
    venvs = {n: copied_from(n, "/opt/venv") for n in images.IMAGES}
    kubeloop = {n: copied_from(n, "/opt/kubeloop/") for n in images.IMAGES}
    assert {venvs[n] for n in (*images.STAGES, "predictor")} == {"deps"}
    assert {kubeloop[n] for n in (*images.STAGES, "predictor")} == {"app"}
    assert venvs["drift"] == "deps-drift" and kubeloop["drift"] == "app-drift"
    assert venvs["operator"] == "deps-operator" and kubeloop["operator"] == "app-operator"
    for name in images.IMAGES:
        copies = [a for s in DF.chain(name) for a in s.args("COPY") if "--from=" in a]
        assert copies.index(next(a for a in copies if "/opt/venv" in a)) < copies.index(
            next(a for a in copies if "/opt/kubeloop/" in a)
        ), name
        assert DF.stages[kubeloop[name]].base == venvs[name]
    # The requirement files are copied before any source, so a source edit keeps them.
    deps_chain = DF.chain("deps")
    assert not any(p in SOURCE_DIRS for s in deps_chain for p in copied_paths(s))


def test_per_image_differences_are_kept() -> None:
    env = {n: " ".join(a for s in DF.chain(n) for a in s.args("ENV")) for n in images.IMAGES}
    for stage in images.STAGES:
        assert "KUBELOOP_HOME=/tmp/kubeloop" in env[stage]
    assert "KUBELOOP_FEAST_REPO=/app/feature_repo" in env["features"]
    assert any("/app/feature_repo" in a for a in DF.stages["features"].args("COPY"))
    assert "KUBELOOP_HOME=/var/lib/kubeloop" in env["drift"]
    assert "NUMBA_CACHE_DIR=/tmp/numba" in env["drift"]
    assert DF.effective("drift", "EXPOSE") == "8090"
    assert DF.effective("predictor", "EXPOSE") == "8080 8081"
    assert DF.effective("operator", "EXPOSE") == "8080 8081"
    assert "--bind_host" in json.loads(DF.effective("predictor", "ENTRYPOINT"))
    assert DF.effective("train", "CMD") == '["--help"]'
    # Cluster Feast (Redis online store, S3 registry) for the features stage and the
    # predictor image, which also runs the chart's Feast feature server.
    for name in ("features", "predictor"):
        assert "feast[redis,aws]==0.67.0" in installed_requirements(DF, name)


def test_torch_is_pinned_and_its_variant_a_build_argument() -> None:
    torch = DF.stages["deps-torch"]
    makefile = (ROOT / "Makefile").read_text()
    version = re.search(r"^TORCH_VERSION := (\S+)", makefile, re.M).group(1)
    assert f"TORCH_VERSION={version}" in torch.args("ARG")
    assert "TORCH_VARIANT=cpu" in torch.args("ARG")
    assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}" in torch.args("ARG")
    (run,) = torch.args("RUN")
    ((_, pip_args),) = pip_commands(run)
    # The variant's own index unless TORCH_INDEX_URL is empty (local wheels, a mirror).
    assert '${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}' in run
    assert pip_targets(pip_args) == ["torch==${TORCH_VERSION}+${TORCH_VARIANT}"]
    for name in (*images.STAGES, "predictor", "drift"):
        assert "deps-torch" in {s.name for s in DF.closure(name)}, name
    containers_mk = (ROOT / "mk" / "containers.mk").read_text()
    for arg in ("TORCH_VERSION", "TORCH_VARIANT", "TORCH_INDEX_URL"):
        assert f"--build-arg {arg}=$({arg})" in containers_mk, arg


def test_operator_never_installs_torch_or_ray() -> None:
    built = {s.name for s in DF.closure("operator")}
    assert "deps-torch" not in built and "deps" not in built
    names = {canonical(r) for r in installed_requirements(DF, "operator")}
    assert names, "the operator installs nothing"
    assert not names & {"torch", "ray"}, names
    assert names == set(images.OPERATOR_DISTRIBUTIONS)


def test_drift_has_its_own_environment() -> None:
    reqs = installed_requirements(DF, "drift")
    assert "alibi-detect==0.11.4" in reqs
    numpy = next(r for r in reqs if canonical(r) == "numpy")
    assert numpy.startswith("numpy==1."), numpy
    assert "deps" not in {s.name for s in DF.closure("drift")}


def test_index_settings_are_build_secrets_only() -> None:
    text = DOCKERFILE.read_text()
    for stage in DF.stages.values():
        for instr, args in stage.instructions:
            if instr in ("COPY", "ADD") and not args.startswith("--from"):
                assert not any(SECRET_FILES.search(p) for p in copied_paths_of(args)), args
            if instr in ("ENV", "ARG"):
                assert not re.search(r"(?i)password|token|index-url=.*@", args), args
    assert "--mount=type=secret,id=pipconf" in text
    assert "--mount=type=secret,id=cacert" in text
    # Whatever .dockerignore leaves in the context, no secret file name is copied: and
    # the context leaves out the local environments, state and tests.
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for path in (".git", ".venv", ".venv-*", "var", "demo-report", "tests", "feature_repo/data"):
        assert path in ignored, path
    assert ignored & {"bench", "bench/results"}


def test_posture_checker_catches_bad_dockerfiles() -> None:
    bad = parse_dockerfile(
        textwrap.dedent(
            """\
            ARG BASE_IMAGE=python:latest
            FROM ${BASE_IMAGE} AS build
            COPY kubeloop kubeloop
            COPY pip.conf /etc/pip.conf
            RUN pip install --no-deps . && pip install requests
            RUN curl -sSL https://example.invalid/x | sh
            FROM python:3.11 AS final
            COPY --from=build /opt/venv /opt/venv
            COPY kubeloop /app/kubeloop
            RUN pip install -r requirements.txt
            USER root
            ENTRYPOINT python app.py
            """
        )
    )
    problems = " | ".join(posture_problems(bad, "final"))
    for expected in (
        "is FROM python:3.11, not ${BASE_IMAGE}",
        "has no version tag",
        "copies index settings into a layer",
        "dependencies installed after the source",
        "unpinned pip install requests",
        "without the pipconf/cacert secrets",
        "curl/wget",
        "installs in the final image",
        "copies from outside a build stage",
        "non-root numeric uid",
        "python -m",
    ):
        assert expected in problems, expected


def test_dependency_install_comes_before_the_source() -> None:
    """A requirements file installed after `COPY kubeloop` is the layer-cache miss the
    Dockerfile avoids; the same lines in the right order pass."""
    head = "ARG BASE_IMAGE=python:3.11-slim\nFROM ${BASE_IMAGE} AS build\n"
    deps = (
        "COPY requirements/runtime.txt requirements/\n"
        "RUN --mount=type=secret,id=pipconf --mount=type=secret,id=cacert "
        "pip install -c c.txt -r requirements/runtime.txt\n"
    )
    src = "COPY kubeloop kubeloop\nRUN pip install --no-deps .\n"
    tail = (
        "FROM ${BASE_IMAGE} AS final\nCOPY --from=build /opt/venv /opt/venv\nUSER 10001\n"
        'ENTRYPOINT ["python", "-m", "x"]\n'
    )
    assert posture_problems(parse_dockerfile(head + deps + src + tail), "final") == []
    bad = posture_problems(parse_dockerfile(head + src + deps + tail), "final")
    assert "build: dependencies installed after the source" in bad


def test_requirement_files_follow_pyproject() -> None:
    for rel, text in images.requirement_files().items():
        assert (ROOT / rel).read_text() == text, f"{rel} is stale: run `make compile`"
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    runtime = requirement_lines(images.RUNTIME_REQUIREMENTS)
    assert [r.replace("feast[redis,aws]", "feast") for r in runtime] == deps
    operator = requirement_lines(images.OPERATOR_REQUIREMENTS)
    assert set(operator) <= set(deps)
    assert not {canonical(r) for r in operator} & {"torch", "ray"}


def test_operator_imports_without_torch_or_ray() -> None:
    """The operator image holds neither torch nor ray: everything ``python -m
    kubeloop.operators.cluster`` imports, at start-up and in ``main()``, and the ``kubeloop``
    CLI the chart's bucket Job runs, loads with both blocked, and every third-party module
    it loads comes with requirements/operator.txt."""
    program = textwrap.dedent(
        """
        import importlib, json, sys
        from pathlib import Path

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "ray"):
                    raise ImportError(f"{name} is not in the operator image")

        sys.meta_path.insert(0, Block())
        for module in (
            "kubeloop.operators.cluster.main",
            "kubeloop.operators.cluster.election",
            "kubeloop.operators.metrics",
            "kubeloop.operators.observe",
            "kubeloop.operators.runs",
            "kubeloop.registry",
            "kubeloop.settings",
            "kfp",
            "minio",
            "prometheus_client",
            "kubeloop.registry.bucket",
        ):
            importlib.import_module(module)
        # The chart's bucket Job runs `kubeloop registry ensure-bucket` in this image.
        importlib.import_module("kubeloop.cli.main")._register()
        ours = [m.__file__ for m in list(sys.modules.values())
                if (getattr(m, "__name__", "") or "").startswith("kubeloop")
                and getattr(m, "__file__", None)]
        print(json.dumps({"loaded": sorted({m.split(".")[0] for m in sys.modules}),
                          "kubeloop_files": sorted(ours)}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.splitlines()[-1])
    assert not set(report["loaded"]) & {"torch", "ray"}
    # Every import statement in the kubeloop modules it loaded, function bodies included:
    # third-party libraries' own optional imports (kubernetes tries kubernetes_validate)
    # are theirs to guard, kubeloop's must be installed.
    imported = set()
    for path in report["kubeloop_files"]:
        for node in ast.walk(ast.parse(Path(path).read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    assert {"kopf", "kubernetes", "httpx", "pydantic", "kfp", "minio"} <= imported
    assert not imported & {"torch", "ray"}, "an operator module imports torch or ray"
    missing = third_party_outside(imported, requirement_lines(images.OPERATOR_REQUIREMENTS))
    assert not missing, f"imported by the operator, not installed by operator.txt: {missing}"


def third_party_outside(modules: set[str], requirements: list[str]) -> dict[str, list[str]]:
    """Top-level modules whose distributions are not in the dependency closure of
    ``requirements`` (as installed here)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    closure: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = canonical(req.name)
        if name in closure:
            continue
        closure.add(name)
        try:
            requires = metadata.requires(req.name) or []
        except metadata.PackageNotFoundError:
            continue
        for spec in requires:
            dep = Requirement(spec)
            if dep.marker is None or any(
                dep.marker.evaluate({"extra": extra}) for extra in ("", *req.extras)
            ):
                todo.append(dep)
    dists = metadata.packages_distributions()
    missing = {}
    for module in modules - set(sys.stdlib_module_names) - {"kubeloop", "__main__"}:
        owners = [canonical(d) for d in dists.get(module, [])]
        if owners and not set(owners) & closure:
            missing[module] = owners
    return missing


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
    proc = subprocess.run(
        ["make", "-s", "images", "IMAGE_ENGINE="],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "no image engine here" in proc.stdout and "nothing built" in proc.stdout


def test_make_images_builds_each_plan_step_with_args_and_secrets(tmp_path: Path) -> None:
    """With an engine, `make images` runs one `<engine> build --target T -t REF...` per
    step of the build plan, with BASE_IMAGE, the torch arguments and the build secrets
    (here a stand-in engine that records its calls and holds every image); a second run
    with nothing newer builds nothing."""
    engine = tmp_path / "podman"
    log = tmp_path / "calls"
    engine.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    engine.chmod(0o755)
    pipconf, cacert = tmp_path / "pip.conf", tmp_path / "ca.crt"
    pipconf.write_text("[global]\n")
    cacert.write_text("")

    def make_images() -> subprocess.CompletedProcess:
        return subprocess.run(
            ["make", "-s", "images", f"IMAGE_ENGINE={engine}", "BASE_IMAGE=local/python:3.11",
             f"PIP_CONF={pipconf}", f"CA_BUNDLE={cacert}", f"PYTHON={sys.executable}",
             f"IMAGES_STAMP={tmp_path / 'stamp'}"],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    proc = make_images()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    builds = [c.split() for c in log.read_text().splitlines() if c.startswith("build ")]
    plan = images.build_plan()
    assert len(builds) == len(plan)
    for (target, refs), argv in zip(plan, builds, strict=True):
        assert argv[:3] == ["build", "--target", target]
        assert [argv[i + 1] for i, a in enumerate(argv) if a == "-t"] == list(refs)
        assert argv[argv.index("-f") + 1] == "Dockerfile" and argv[-1] == "."
        assert "BASE_IMAGE=local/python:3.11" in argv and "TORCH_VARIANT=cpu" in argv
        assert f"id=pipconf,src={pipconf}" in argv and f"id=cacert,src={cacert}" in argv
    again = make_images()
    assert again.returncode == 0 and "images: up to date" in again.stdout, again.stdout
    assert len([c for c in log.read_text().splitlines() if c.startswith("build ")]) == len(plan)


def test_build_plan_builds_each_distinct_image_once() -> None:
    """The bare stage targets are the pipeline-stage image under their names: one build
    tagged with each; every other image is its own target."""
    plan = images.build_plan()
    refs = [ref for _, group in plan for ref in group]
    assert sorted(refs) == sorted(images.image(n) for n in images.IMAGES)
    assert len({t for t, _ in plan}) == len(plan)
    for name in images.BARE_STAGES:
        assert DF.stages[name].base == images.PIPELINE_STAGE, name
        assert not DF.stages[name].instructions, f"{name} adds to the stage image"
    for name in set(images.IMAGES) - set(images.BARE_STAGES):
        stage = DF.stages[name]
        assert stage.instructions or stage.base != images.PIPELINE_STAGE, name
    cuda = images.build_plan("-cu126")
    assert all(ref.endswith(":0.1.0-cu126") for _, group in cuda for ref in group)
