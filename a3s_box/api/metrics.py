"""/metrics in Prometheus' text format (prometheus-client): gauges read from the state
store at each scrape, counters and histograms moved by the API's own work."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class HostCollector(Collector):
    def __init__(self, home: Path) -> None:
        self.home = home

    def collect(self) -> Iterator[Any]:
        from a3s_box.orchestrator.host import Host

        boxes = GaugeMetricFamily("a3s_box_boxes", "Boxes by status and driver", labels=["status", "driver"])
        pools = GaugeMetricFamily("a3s_box_pool_members", "Pool members by state", labels=["pool", "state"])
        images = GaugeMetricFamily("a3s_box_image_store_bytes", "Bytes of images in the store")
        with Host(self.home) as host:
            counts: dict[tuple[str, str], int] = {}
            for b in host.ps():
                counts[(b.status, b.driver)] = counts.get((b.status, b.driver), 0) + 1
            for (status, driver), n in sorted(counts.items()):
                boxes.add_metric([status, driver], n)
            for p in host.pools():
                for state in ("ready", "leased", "total"):
                    pools.add_metric([f"{p['project']}.{p['name']}", state], p[state])
            images.add_metric([], sum(r.size for r in host.images.list()))
        yield boxes
        yield pools
        yield images


class Metrics:
    def __init__(self, home: Path) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(HostCollector(home))
        self.requests = Counter("a3s_box_api_requests", "API requests", ["route", "status"], registry=self.registry)
        self.execs = Counter("a3s_box_execs", "Commands run in boxes through the API", registry=self.registry)
        self.exec_seconds = Histogram("a3s_box_exec_seconds", "Duration of commands run through the API",
                                      registry=self.registry)
        self.box_start_seconds = Histogram("a3s_box_box_start_seconds", "Box creations through the API, to "
                                           "its agent running (snapshot restores and cold boots)", ["boot"],
                                           registry=self.registry,
                                           buckets=(0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30, 120))
        self.apply_seconds = Histogram("a3s_box_apply_seconds", "Duration of applies", ["outcome"],
                                       registry=self.registry,
                                       buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300))
