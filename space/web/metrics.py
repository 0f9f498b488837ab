"""``GET /metrics`` for operators: HTTP requests and latency here, the serving counters (images, batches,
queue depth, explanations: :mod:`space.serving.metrics`), and the model served.

Counters live in prometheus-client's default registry (one set per process, with its process metrics);
what describes the loaded model is read from the service at scrape time, so loading needs no hook.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from space.web import logs

if TYPE_CHECKING:
    from starlette.responses import Response

    from space.serving.service import ClassificationService

# Route label for requests that matched no route (404s, probes for random paths): keeps cardinality bounded.
UNMATCHED = "unmatched"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

REQUESTS = Counter(
    "space_http_requests_total",
    "HTTP requests answered, by route template, method and status code.",
    ["route", "method", "status"],
)
LATENCY = Histogram(
    "space_http_request_duration_seconds",
    "Time from request start to the end of the response, by route template and method.",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


def observe_request(scope: dict[str, Any], status: int, seconds: float) -> None:
    """Count one answered request under its route template (bounded labels), for the request middleware."""
    route = logs.route_label(scope) or UNMATCHED
    method = str(scope.get("method", ""))
    method = method if method in METHODS else "OTHER"
    REQUESTS.labels(route, method, str(status)).inc()
    LATENCY.labels(route, method).observe(seconds)


def observe_refusal(route: str) -> None:
    """Count one request refused at the door (space/web/door.py): a 503 on a model route."""
    REQUESTS.labels(route, "POST", "503").inc()


class ModelCollector(Collector):
    """What the service serves, read at scrape time: model id, revision, backend, load time, readiness."""

    def __init__(self, service: ClassificationService) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        info = self.service.info
        ready = GaugeMetricFamily("space_model_ready", "1 once the model is loaded and warmed up, else 0.")
        ready.add_metric([], 1.0 if self.service.ready else 0.0)
        yield ready
        if info is None:
            return
        load = GaugeMetricFamily(
            "space_model_load_seconds", "Seconds spent loading and warming up the model at start-up."
        )
        load.add_metric([], info.load_seconds)
        yield load
        model = InfoMetricFamily("space_model", "The model served: id, revision, backend and architecture.")
        model.add_metric(
            [],
            {
                "model": info.model,
                "revision": info.revision or "",
                "backend": info.backend,
                "architecture": info.architecture,
                "num_labels": str(info.num_labels),
            },
        )
        yield model


def metrics_endpoint(service: ClassificationService) -> Any:
    """The ``GET /metrics`` handler: process-wide metrics plus this app's model metrics."""
    from starlette.responses import Response

    model_registry = CollectorRegistry(auto_describe=False)
    model_registry.register(ModelCollector(service))

    def metrics() -> Response:
        body = generate_latest(REGISTRY) + generate_latest(model_registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return metrics
