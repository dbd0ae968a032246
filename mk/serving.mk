# Serving: wrk (Debian) for the serving benchmark.
.PHONY: bench-serving-deps bench-serving

bench-serving-deps: ## install wrk, the serving benchmark's load generator (Debian package)
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }

bench-serving: install bench-serving-deps ## serving throughput/latency (plain kserve vs kubeloop vs router) → docs/benchmarks.md
	$(BIN)/python bench/serving/run.py

# `make bench` needs wrk too (a recipe-less rule only adds a prerequisite).
bench: bench-serving-deps
