# syntax=docker/dockerfile:1
# Every kubeloop image, one target each (names and references: kubeloop/images.py):
#   pipeline stages  ingest validate features train evaluate gate register
#   predictor        the KServe predictor (also runs the chart's Feast feature server)
#   drift            the drift service, in its own environment (alibi-detect needs numpy<2)
#   operator         the kopf operator, without torch and ray
# Build from the repository root, e.g.
#   podman build --target train -t ghcr.io/kubeloop/kubeloop-train:0.1.0 .
# or `make images` for all of them. Package-index settings come in at build time only and
# never land in a layer: --secret id=pipconf,src=<pip.conf> --secret id=cacert,src=<CA
# bundle>, and a folder of local wheels (e.g. a torch build the index cannot serve) as
# --build-context local-wheels=<folder>.

# A locally built Debian-based Python 3.11 image can stand in (--build-arg BASE_IMAGE=...;
# `make base-image` builds one where python:3.11-slim cannot be pulled).
ARG BASE_IMAGE=python:3.11-slim

# ---------------------------------------------------------------- build stages

# Empty unless the build is given --build-context local-wheels=<folder>; pip looks there
# first (find-links), through a bind mount, so the wheels never enter a layer.
FROM scratch AS local-wheels

FROM ${BASE_IMAGE} AS build-base
# PIP_CONFIG_FILE is read only when the pipconf secret is mounted; PIP_CERT is the image's
# own bundle unless the cacert secret is mounted over it.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CONFIG_FILE=/run/secrets/pipconf \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PIP_FIND_LINKS=/run/wheels \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
COPY requirements/constraints.txt requirements/

# kubeloop itself as a wheel, installed --no-deps next to each environment below (under
# /opt/kubeloop, laid out as from /): the final images copy the environment, then
# kubeloop, so a source edit rebuilds a few small layers, never the dependencies.
FROM build-base AS wheel
COPY pyproject.toml setup.py README.md ./
COPY kubeloop kubeloop
COPY components components
COPY pipelines pipelines
COPY operators operators
RUN --mount=type=secret,id=pipconf --mount=type=secret,id=cacert,target=/etc/ssl/certs/ca-certificates.crt \
    --mount=type=bind,from=local-wheels,target=/run/wheels \
    pip wheel --no-deps -w /wheels .

# torch from its own index: cpu (PyPI's default build pulls gigabytes of CUDA) or a
# CUDA variant such as cu126 for GPU nodes. The local version (+cpu, +cu126) pins the
# variant whichever source serves it; TORCH_INDEX_URL= (empty) leaves the choice to the
# pip configuration and the local wheels, e.g. where download.pytorch.org is unreachable.
FROM build-base AS deps-torch
ARG TORCH_VERSION=2.13.0
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}
RUN --mount=type=secret,id=pipconf --mount=type=secret,id=cacert,target=/etc/ssl/certs/ca-certificates.crt \
    --mount=type=bind,from=local-wheels,target=/run/wheels \
    pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==${TORCH_VERSION}+${TORCH_VARIANT}"

# The main environment, shared by the predictor and every pipeline stage.
FROM deps-torch AS deps
COPY requirements/runtime.txt requirements/
RUN --mount=type=secret,id=pipconf --mount=type=secret,id=cacert,target=/etc/ssl/certs/ca-certificates.crt \
    --mount=type=bind,from=local-wheels,target=/run/wheels \
    pip install -c requirements/constraints.txt -r requirements/runtime.txt

FROM deps AS app
COPY --from=wheel /wheels /wheels
RUN pip install --no-deps --root /opt/kubeloop /wheels/*.whl

# The drift service's environment: alibi-detect pins numpy<2, Pillow<10 and pydantic<2,
# which Feast and KServe cannot share. Its MMD detector runs on torch.
FROM deps-torch AS deps-drift
COPY requirements/drift.txt requirements/
RUN --mount=type=secret,id=pipconf --mount=type=secret,id=cacert,target=/etc/ssl/certs/ca-certificates.crt \
    --mount=type=bind,from=local-wheels,target=/run/wheels \
    pip install -r requirements/drift.txt

FROM deps-drift AS app-drift
COPY --from=wheel /wheels /wheels
RUN pip install --no-deps --root /opt/kubeloop /wheels/*.whl

# The operator's environment: only what it imports (requirements/operator.txt).
FROM build-base AS deps-operator
COPY requirements/operator.txt requirements/
RUN --mount=type=secret,id=pipconf --mount=type=secret,id=cacert,target=/etc/ssl/certs/ca-certificates.crt \
    --mount=type=bind,from=local-wheels,target=/run/wheels \
    pip install -c requirements/constraints.txt -r requirements/operator.txt

FROM deps-operator AS app-operator
COPY --from=wheel /wheels /wheels
RUN pip install --no-deps --root /opt/kubeloop /wheels/*.whl

# The Feast definitions for the features stage; the stage copies them per run.
FROM build-base AS feature-repo
COPY feature_repo /src/feature_repo

# ---------------------------------------------------------------- final stages

FROM ${BASE_IMAGE} AS runtime
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin kubeloop
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /app

FROM runtime AS pipeline-stage
COPY --from=deps /opt/venv /opt/venv
COPY --from=app /opt/kubeloop/ /
ENV KUBELOOP_HOME=/tmp/kubeloop
USER 10001
# KFP replaces the command with the component's own; by hand the image runs the CLI.
ENTRYPOINT ["python", "-m", "kubeloop.cli.main"]
CMD ["--help"]

FROM pipeline-stage AS ingest
FROM pipeline-stage AS validate
FROM pipeline-stage AS train
FROM pipeline-stage AS evaluate
FROM pipeline-stage AS gate
FROM pipeline-stage AS register

FROM pipeline-stage AS features
COPY --from=feature-repo --chown=10001:10001 /src/feature_repo /app/feature_repo
ENV KUBELOOP_FEAST_REPO=/app/feature_repo

FROM runtime AS predictor
COPY --from=deps /opt/venv /opt/venv
COPY --from=app /opt/kubeloop/ /
USER 10001
# 8080: REST (V1, V2, /metrics); 8081: gRPC (Open Inference Protocol). The
# InferenceService adds `--model-dir /mnt/models`, filled by KServe's storage initializer.
EXPOSE 8080 8081
ENTRYPOINT ["python", "-m", "kubeloop.serving.predictor", "--bind_host", "0.0.0.0"]

FROM runtime AS drift
COPY --from=deps-drift /opt/venv /opt/venv
COPY --from=app-drift /opt/kubeloop/ /
ENV NUMBA_CACHE_DIR=/tmp/numba \
    KUBELOOP_HOME=/var/lib/kubeloop
# Thresholds are cached under $KUBELOOP_HOME/drift-cache: mount a volume there so a
# restarted pod does not recompute them.
RUN install -d -o 10001 -g 10001 /var/lib/kubeloop
VOLUME ["/var/lib/kubeloop"]
USER 10001
EXPOSE 8090
ENTRYPOINT ["python", "-m", "kubeloop.drift", "--host", "0.0.0.0", "--port", "8090"]

FROM runtime AS operator
COPY --from=deps-operator /opt/venv /opt/venv
COPY --from=app-operator /opt/kubeloop/ /
USER 10001
# 8080: /healthz on every replica; 8081: /metrics (kubeloop_rollout_*).
EXPOSE 8080 8081
ENTRYPOINT ["python", "-m", "kubeloop.operators.cluster"]
