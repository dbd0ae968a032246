"""Benchmarks: ``python -m kubeloop.bench`` runs ``bench/*/bench_*.py`` and writes docs/benchmarks.md."""
