# Containers: podman, buildah and mmdebstrap from Debian, kubeloop's images, their base.
#
# The runtime is Debian's podman with runc and a repository-local containers.conf
# (mk/containers.conf, exported as CONTAINERS_CONF). Storage stays the engine's default
# (rootful: overlay under /var/lib/containers; fuse-overlayfs for rootless), so layers
# are shared by every checkout on the machine. Every image is a target of the one
# Dockerfile (kubeloop.images.IMAGES). Where python:3.11-slim cannot be pulled (no
# registry reachable), `make base-image` builds an equivalent base from Debian's own
# packages with mmdebstrap and `make images` uses it.

CONTAINER_PACKAGES := podman buildah mmdebstrap runc uidmap slirp4netns fuse-overlayfs
CONTAINER_COMMANDS := podman buildah mmdebstrap runc newuidmap slirp4netns fuse-overlayfs
export CONTAINERS_CONF ?= $(CURDIR)/mk/containers.conf

IMAGE_ENGINE ?= $(shell if command -v podman >/dev/null 2>&1; then echo podman; elif command -v buildah >/dev/null 2>&1; then echo buildah; elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then echo docker; fi)
UPSTREAM_BASE := python:3.11-slim
# Debian bookworm's Python 3.11 (the release python:3.11-slim is built on), imported.
LOCAL_BASE := localhost/kubeloop-python:3.11-bookworm
DEBIAN_MIRROR ?= http://deb.debian.org/debian
BASE_PACKAGES := python3.11,python3-venv,python-is-python3,ca-certificates
# Empty: python:3.11-slim when it is here or a registry answers, else LOCAL_BASE.
BASE_IMAGE ?=
TORCH_VARIANT ?= cpu
PIP_CONF ?= $(firstword $(wildcard $(PIP_CONFIG_FILE) $(HOME)/.config/pip/pip.conf $(HOME)/.pip/pip.conf /etc/pip.conf))
CA_BUNDLE ?= $(wildcard /etc/ssl/certs/ca-certificates.crt)
# A folder of wheels pip looks in first (find-links); default: $PIP_FIND_LINKS when it is
# one local folder.
LOCAL_WHEELS ?= $(firstword $(wildcard $(PIP_FIND_LINKS)))
# torch comes from the local wheels when they hold this variant, else from its index.
TORCH_INDEX_URL ?= $(if $(wildcard $(LOCAL_WHEELS)/torch-$(TORCH_VERSION)+$(TORCH_VARIANT)-*.whl),,https://download.pytorch.org/whl/$(TORCH_VARIANT))
comma := ,
IMAGE_BUILD_INPUTS = $(if $(PIP_CONF),--secret id=pipconf$(comma)src=$(PIP_CONF)) \
  $(if $(CA_BUNDLE),--secret id=cacert$(comma)src=$(CA_BUNDLE)) \
  $(if $(LOCAL_WHEELS),--build-context local-wheels=$(LOCAL_WHEELS)) \
  --build-arg TORCH_VERSION=$(TORCH_VERSION) --build-arg TORCH_VARIANT=$(TORCH_VARIANT) \
  --build-arg TORCH_INDEX_URL=$(TORCH_INDEX_URL)
# Another torch variant gets its own tags, e.g. kubeloop-train:0.1.0-cu126.
IMAGE_TAG_SUFFIX = $(if $(filter-out cpu,$(TORCH_VARIANT)),-$(TORCH_VARIANT))

.PHONY: container-runtime base-image images

container-runtime: ## install podman, buildah, mmdebstrap and runc from Debian when one is missing
	@missing=$$(for c in $(CONTAINER_COMMANDS); do command -v $$c >/dev/null 2>&1 || echo $$c; done); \
	if [ -n "$$missing" ]; then \
	  command -v apt-get >/dev/null || { echo "container-runtime: missing $$missing and no apt-get; install $(CONTAINER_PACKAGES)"; exit 1; }; \
	  echo "container-runtime: installing $(CONTAINER_PACKAGES) (missing: $$(echo $$missing))"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(CONTAINER_PACKAGES); \
	fi

base-image: container-runtime ## build $(LOCAL_BASE) from Debian's packages (mmdebstrap) when it is not here
	@if podman image exists $(LOCAL_BASE); then echo "base-image: $(LOCAL_BASE) is here"; exit 0; fi; \
	set -e; mkdir -p var/images; tar=var/images/python-base.tar; \
	echo "base-image: mmdebstrap bookworm ($(BASE_PACKAGES)) from $(DEBIAN_MIRROR)"; \
	mmdebstrap --quiet --variant=minbase --include=$(BASE_PACKAGES) \
	  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
	  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
	  --dpkgopt='path-exclude=/usr/share/locale/*' \
	  bookworm $$tar "deb $(DEBIAN_MIRROR) bookworm main" "deb $(DEBIAN_MIRROR) bookworm-updates main" \
	  "deb $(DEBIAN_MIRROR)-security bookworm-security main"; \
	podman import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' $$tar $(LOCAL_BASE) >/dev/null; \
	rm -f $$tar; echo "base-image: imported $(LOCAL_BASE)"

# The base: BASE_IMAGE when given; else python:3.11-slim when the engine has it or Docker
# Hub answers (one HTTPS request, 5 s at most); else the Debian-built LOCAL_BASE.
define RESOLVE_BASE
base="$(BASE_IMAGE)"; \
if [ -z "$$base" ]; then \
  if $(IMAGE_ENGINE) image exists $(UPSTREAM_BASE) 2>/dev/null \
     || [ "$$(curl -s -m 5 -o /dev/null -w '%{http_code}' https://registry-1.docker.io/v2/)" = 401 ]; then \
    base=$(UPSTREAM_BASE); \
  else \
    echo "images: no registry answers and $(UPSTREAM_BASE) is not here: using $(LOCAL_BASE)"; \
    $(MAKE) -s base-image || exit 1; base=$(LOCAL_BASE); \
  fi; \
fi
endef

# What the images are built from: a newer file here (or other build arguments) rebuilds
# them; otherwise `make images` only checks that every image is still there.
IMAGE_SOURCES := Dockerfile .dockerignore pyproject.toml setup.py README.md requirements kubeloop components pipelines operators feature_repo
IMAGES_STAMP = var/images/built$(IMAGE_TAG_SUFFIX)
IMAGE_INSPECT = $(if $(filter buildah,$(notdir $(IMAGE_ENGINE))),$(IMAGE_ENGINE) inspect --type image,$(IMAGE_ENGINE) image inspect)

images: ## build every image from the one Dockerfile (podman, buildah or docker); says so when no engine is present
	@if [ -z "$(IMAGE_ENGINE)" ]; then \
	  echo "images: no image engine here (no podman, no buildah, no running docker daemon): nothing built."; \
	  echo "images: install one with \`make container-runtime\` (Debian) and run \`make images\` again."; \
	  exit 0; \
	fi; \
	plan=$$($(PYTHON) -c "from kubeloop.images import build_plan; print(*(t + '=' + ','.join(refs) for t, refs in build_plan('$(IMAGE_TAG_SUFFIX)')))") || exit 1; \
	$(RESOLVE_BASE); \
	inputs="base=$$base $(IMAGE_BUILD_INPUTS)"; \
	if [ -f $(IMAGES_STAMP) ] && [ "$$(cat $(IMAGES_STAMP))" = "$$inputs" ] \
	   && [ -z "$$(find $(IMAGE_SOURCES) -newer $(IMAGES_STAMP) -not -path '*/__pycache__/*' -not -path '*/tests/*' -not -path 'feature_repo/data/*' -print -quit)" ] \
	   && $(IMAGE_INSPECT) $$(echo $$plan | sed 's/[^ ]*=//g; s/,/ /g') >/dev/null 2>&1; then \
	  echo "images: up to date (nothing newer than $(IMAGES_STAMP))"; exit 0; \
	fi; \
	for step in $$plan; do \
	  refs=$${step#*=}; \
	  echo "images: $(IMAGE_ENGINE) build --target $${step%%=*} -t $${refs//,/ -t } (base $$base)"; \
	  SECONDS=0; \
	  $(IMAGE_ENGINE) build --target $${step%%=*} -t $${refs//,/ -t } -f Dockerfile \
	    --build-arg BASE_IMAGE=$$base $(IMAGE_BUILD_INPUTS) . || exit 1; \
	  echo "images: built $${step%%=*} in $${SECONDS}s"; \
	done; \
	mkdir -p $(dir $(IMAGES_STAMP)) && echo "$$inputs" > $(IMAGES_STAMP)

# The image tests (tests/containers) run the built images: `make test` builds them first;
# a second run finds every layer cached.
TEST_DEPS += container-runtime images
