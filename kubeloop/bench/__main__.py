"""``python -m kubeloop.bench [--only NAME ...]``: run benchmarks, update docs/benchmarks.md."""

from __future__ import annotations

import argparse
import sys

from kubeloop.bench.runner import BenchmarkError, discover, run_all


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubeloop.bench", description=__doc__)
    parser.add_argument("--only", action="append", metavar="NAME", help="run only this benchmark")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name, path in discover().items():
            print(f"{name}\t{path}")
        return 0
    try:
        run_all(args.only)
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
