"""kubeloop's tests; ``tests.support`` holds what several test folders and the benchmarks share."""
