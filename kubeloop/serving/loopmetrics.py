"""Counters and histograms for the request path, updated without locks.

prometheus-client guards every increment with a mutex and walks a histogram's buckets
in Python; four such updates per request cost the predictor a few percent of its
throughput. The predictor updates its hot-path metrics only from its event loop's
thread, so plain attribute and list updates suffice: a histogram finds its bucket with
``bisect`` and adds one. The families are exposed through a prometheus-client
``Collector`` in the default registry, in the same text a ``Counter``/``Histogram``
would produce (without the ``_created`` series), so kserve's ``/metrics`` serves them
alongside everything else.

Single-writer: update a family's children from one thread only (the event loop).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class LoopCounter:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("counters only go up")
        self.value += amount


class LoopHistogram:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last slot is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: the first bound >= value, i.e. Prometheus's `le` bucket.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class _Family(Collector):
    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], object] = {}
        if registry is not None:
            registry.register(self)

    def labels(self, *values: str):
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._new_child()
        return child

    def _new_child(self):
        raise NotImplementedError

    def describe(self) -> Iterable[Metric]:
        yield self._empty()

    def _empty(self) -> Metric:
        raise NotImplementedError


class LoopCounterFamily(_Family):
    """A labelled counter; ``name`` without the ``_total`` suffix, as prometheus-client."""

    def _new_child(self) -> LoopCounter:
        return LoopCounter()

    def _empty(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterable[Metric]:
        family = self._empty()
        for key, child in list(self._children.items()):
            family.add_metric(key, child.value)
        yield family


class LoopHistogramFamily(_Family):
    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        bounds = tuple(float(b) for b in buckets if b != float("inf"))
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError(f"{name}: buckets must be increasing and distinct")
        self.bounds = bounds
        self._le = [floatToGoString(b) for b in bounds] + ["+Inf"]
        super().__init__(name, documentation, labelnames, registry)

    def _new_child(self) -> LoopHistogram:
        return LoopHistogram(self.bounds)

    def _empty(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterable[Metric]:
        family = self._empty()
        for key, child in list(self._children.items()):
            counts, total, cumulative = list(child.counts), child.sum, []
            running = 0
            for le, n in zip(self._le, counts, strict=True):
                running += n
                cumulative.append((le, running))
            family.add_metric(key, cumulative, total)
        yield family
