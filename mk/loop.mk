# The closed loop on one machine: variants of `make demo` and the loop's benchmark.
.PHONY: demo-quick demo-stationary bench-loop

demo-quick: install $(DEMO_DEPS) ## the closed loop with v1 trained in plain torch instead of the pipeline
	$(BIN)/kubeloop demo --quick

demo-stationary: install $(DEMO_DEPS) ## the loop on traffic without drift: no retraining, no rollback
	$(BIN)/kubeloop demo --quick --scenario stationary

bench-loop: install $(DEMO_DEPS) ## detection delay and update cycle → docs/benchmarks.md
	$(BIN)/python -m kubeloop.bench --only loop

# `make bench` runs bench/loop too, which needs the drift service's venv and Prometheus.
bench: drift-env prometheus
