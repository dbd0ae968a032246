# The closed loop on one machine: variants of `make demo` and the loop's benchmark.
.PHONY: demo-quick demo-stationary demo-concept demo-label-shift bench-loop

demo-quick: install $(DEMO_DEPS) ## the closed loop with v1 trained in plain torch instead of the pipeline
	$(BIN)/kubeloop demo --quick

demo-stationary: install $(DEMO_DEPS) ## the loop on traffic without drift: no retraining, no rollback
	$(BIN)/kubeloop demo --quick --scenario stationary

demo-concept: install $(DEMO_DEPS) ## concept drift: P(y|x) changes, caught by the delayed labels' error rate
	$(BIN)/kubeloop demo --quick --scenario concept

demo-label-shift: install $(DEMO_DEPS) ## label shift: more frauds, P(x|y) unchanged, caught by the predicted-class share
	$(BIN)/kubeloop demo --quick --scenario label_shift

bench-loop: install $(DEMO_DEPS) ## every scenario's detection delay, update cycle and gap to an oracle → docs/benchmarks.md
	$(BIN)/python -m kubeloop.bench --only loop

# `make bench` runs bench/loop too, which needs the drift service's venv and Prometheus.
bench: drift-env prometheus
