# Monitoring: the drift service's own environment and Debian's Prometheus (with promtool).
#
# alibi-detect 0.11.4 (the last Apache-2.0 release) needs numpy<2, Pillow<10 and
# pydantic<2, which Feast and KServe cannot share, so the drift service (kubeloop/drift,
# `python -m kubeloop.drift`) runs from .venv-drift. CPU torch goes first and pinned, as
# in the main environment. The rules and dashboards (kubeloop/monitoring) are generated
# in the main environment; promtool checks them.

DRIFT_VENV := .venv-drift
DRIFT_STAMP := $(DRIFT_VENV)/.installed

.PHONY: drift-env prometheus promtool-test

$(DRIFT_STAMP): requirements/drift.txt pyproject.toml setup.py
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (the drift service needs Python 3.11)"; exit 1; }
	@test -x $(DRIFT_VENV)/bin/python || $(PYTHON) -m venv $(DRIFT_VENV)
	$(DRIFT_VENV)/bin/python -m pip install -q --upgrade "pip>=24"
	$(DRIFT_VENV)/bin/python -m pip install -q "torch==$(TORCH_VERSION)"
	$(DRIFT_VENV)/bin/python -m pip install -q -r requirements/drift.txt
	$(DRIFT_VENV)/bin/python -m pip install -q --no-deps -e .
	@touch $@

drift-env: $(DRIFT_STAMP) ## create .venv-drift for the drift service (alibi-detect 0.11.4)

prometheus: ## install Debian's prometheus (and promtool) when promtool is missing
	@command -v promtool >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus; }

promtool-test: prometheus ## check and unit-test the generated alert rules
	promtool check rules manifests/monitoring/rules.yaml
	promtool test rules manifests/monitoring/tests/rules_test.yaml

TEST_DEPS += drift-env prometheus
DEMO_DEPS += drift-env prometheus
