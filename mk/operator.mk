# Operator: the ModelDeployment reconciler, its local driver and its benchmark.
# Its local tests need Debian's Prometheus and the drift service's venv (mk/monitoring.mk).

.PHONY: operator-test operator-local bench-operator

operator-test: install prometheus drift-env ## run the operator's unit and local tests
	$(BIN)/python -m pytest tests/unit/test_operator_*.py tests/unit/test_reconciler_*.py tests/local/test_operator_*.py $(PYTEST_ARGS)

operator-local: install ## run the operator over the local runtime (apply with `kubeloop rollout apply -f`)
	$(BIN)/python -m kubeloop.local.operator

bench-operator: install prometheus drift-env ## decision latency and drift-to-retraining time into docs/benchmarks.md
	$(BIN)/python bench/operator/run.py --trials 3 --write-docs
