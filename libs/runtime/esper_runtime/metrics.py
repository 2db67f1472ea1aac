"""Metrics made from the catalogue (``esper_contracts.metrics``), and the ones every service shares.

A service never spells a metric's type, help or labels itself: :func:`counter`, :func:`gauge` and
:func:`histogram` build the prometheus-client metric its catalogue entry describes, and :func:`family`
does the same for a collector that reads a service's state when Prometheus scrapes. Labels whose values
form a fixed set in the catalogue are created at once, so their series exist (at zero) before the first event.

:class:`BusCollector` is on every service: it reports what became of the messages its bus consumers took.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from itertools import product
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from esper_contracts import MetricSpec, MetricType, metric_spec

if TYPE_CHECKING:
    from esper_oona import Bus

# No ``<name>_created`` series beside every counter and histogram: the catalogue does not list them, no dashboard
# reads them, and they double the series of a labelled counter. (A process-wide switch of prometheus-client.)
disable_created_metrics()


def _checked(name: str, expected: MetricType) -> MetricSpec:
    spec = metric_spec(name)
    if spec.type is not expected:
        raise TypeError(f"{name} is a {spec.type.value} in the catalogue, not a {expected.value}")
    return spec


def _preset(metric: Any, spec: MetricSpec, fixed: dict[str, str]) -> None:
    """Create every combination of the catalogue's fixed label values (labels named in ``fixed`` take that value)."""
    if not spec.labels:
        return
    choices = [(fixed[label],) if label in fixed else spec.label_values(label) for label in spec.labels]
    if all(choices):
        for values in product(*choices):
            metric.labels(*values)


def counter(registry: CollectorRegistry, name: str, **fixed: str) -> Counter:
    """The catalogue's counter ``name`` in ``registry``; ``fixed`` label values preset its series with the others."""
    spec = _checked(name, MetricType.COUNTER)
    metric = Counter(name, spec.help, spec.labels, registry=registry)
    _preset(metric, spec, fixed)
    return metric


def gauge(registry: CollectorRegistry, name: str, **fixed: str) -> Gauge:
    """The catalogue's gauge ``name`` in ``registry``."""
    spec = _checked(name, MetricType.GAUGE)
    metric = Gauge(name, spec.help, spec.labels, registry=registry)
    _preset(metric, spec, fixed)
    return metric


def histogram(registry: CollectorRegistry, name: str, **fixed: str) -> Histogram:
    """The catalogue's histogram ``name`` (with its buckets) in ``registry``."""
    spec = _checked(name, MetricType.HISTOGRAM)
    metric = Histogram(name, spec.help, spec.labels, registry=registry, buckets=spec.buckets)
    _preset(metric, spec, fixed)
    return metric


def family(name: str) -> CounterMetricFamily | GaugeMetricFamily:
    """An empty metric family for the catalogue's counter or gauge ``name``, for a collector to fill."""
    spec = metric_spec(name)
    if spec.type is MetricType.COUNTER:
        return CounterMetricFamily(name, spec.help, labels=spec.labels)
    if spec.type is MetricType.GAUGE:
        return GaugeMetricFamily(name, spec.help, labels=spec.labels)
    raise TypeError(f"{name} is a {spec.type.value}: collectors here fill counters and gauges only")


class StateCollector(Collector):
    """A collector whose families a function builds from a service's state at every scrape."""

    def __init__(self, build: Callable[[], Iterable[Metric]]) -> None:
        self._build = build

    def collect(self) -> Iterator[Metric]:
        """The families, built now."""
        yield from self._build()


class BusCollector(Collector):
    """``esper_bus_messages``: the counters of every consumer the service's bus holds, read at scrape time."""

    OUTCOMES = ("delivered", "acked", "nacked", "dead_lettered")

    def __init__(self, service: str, bus: Callable[[], Bus | None]) -> None:
        self._service = service
        self._bus = bus

    def collect(self) -> Iterator[Metric]:
        """One series per consumer and outcome (none before the bus is opened)."""
        messages = family("esper_bus_messages")
        bus = self._bus()
        totals: dict[tuple[str, str], list[int]] = {}
        for sub in bus.subscriptions if bus is not None else ():
            # Two consumers of one subscription (a service may attach several) add up.
            row = totals.setdefault((sub.topic, sub.name), [0, 0, 0, 0])
            stats = sub.stats
            for i, value in enumerate((stats.delivered, stats.acked, stats.nacked, stats.dead_lettered)):
                row[i] += value
        for (topic, name), row in sorted(totals.items()):
            for outcome, value in zip(self.OUTCOMES, row, strict=True):
                messages.add_metric([self._service, topic, name, outcome], value)
        yield messages
