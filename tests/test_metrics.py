"""``GET /metrics`` on the real server: Prometheus text that moves with the traffic it describes."""

from __future__ import annotations

import json
import re

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO, Photo, Server

JPEG = {"content-type": "image/jpeg"}


def scrape(server: Server) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample of ``/metrics``, by sample name: ``[(labels, value), ...]``."""
    response = server.client().get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    """The sample ``name`` with exactly these labels (0 if it has not been seen yet)."""
    return sum(v for have, v in samples.get(name, []) if all(have.get(k) == x for k, x in labels.items()))


def test_requests_latency_images_and_batches_are_counted(real_server: Server, photos: list[Photo]) -> None:
    lion = next(p for p in photos if p.path.name == "lion.jpg")
    before = scrape(real_server)
    with real_server.client() as client:
        for _ in range(2):
            ok = client.post("/predict", content=lion.path.read_bytes(), headers=JPEG)
            assert ok.status_code == 200
        bad = client.post("/predict", content=b"not an image", headers={"content-type": "image/png"})
        assert bad.status_code == 400
    after = scrape(real_server)

    predict_ok = dict(name="space_http_requests_total", route="/predict", method="POST", status="200")
    predict_bad = {**predict_ok, "status": "400"}
    assert value(after, **predict_ok) - value(before, **predict_ok) == 2
    assert value(after, **predict_bad) - value(before, **predict_bad) == 1
    latency = dict(route="/predict", method="POST")
    count = "space_http_request_duration_seconds_count"
    assert value(after, count, **latency) - value(before, count, **latency) == 3
    total = "space_http_request_duration_seconds_sum"
    assert value(after, total, **latency) > value(before, total, **latency)
    assert value(after, "space_images_classified_total") - value(before, "space_images_classified_total") == 2
    assert value(after, "space_batch_size_count") - value(before, "space_batch_size_count") == 2
    assert value(after, "space_batch_size_sum") - value(before, "space_batch_size_sum") == 2


def test_route_labels_are_templates_so_cardinality_stays_bounded(real_server: Server) -> None:
    with real_server.client() as client:
        for path in ("/no/such/page-1", "/no/such/page-2", "/gradio_api/file=/etc/hostname"):
            client.get(path)
        client.get("/healthz")
    routes = {labels["route"] for labels, _ in scrape(real_server)["space_http_requests_total"]}
    assert "unmatched" in routes and "/healthz" in routes
    assert not any("page-" in route or "hostname" in route for route in routes), routes
    assert any(route.startswith("/gradio_api/file=") and "{" in route for route in routes), routes


def test_model_info_load_time_readiness_and_queue_depth(real_server: Server, real_model) -> None:
    samples = scrape(real_server)
    served = real_server.client().get("/info").json()["model"]
    [(info, one)] = samples["space_model_info"]
    assert one == 1
    assert info["model"] == str(real_model) and info["backend"] == served["backend"]
    assert info["backend"].startswith(("torch", "onnxruntime"))
    assert info["architecture"] == "EfficientNetForImageClassification" and info["num_labels"] == "1000"
    assert info["revision"] == (served["revision"] or "")
    assert value(samples, "space_model_load_seconds") == served["load_seconds"] > 0
    assert value(samples, "space_model_ready") == 1
    assert value(samples, "space_queue_depth") == 0  # nothing waiting once every request was answered


def test_grafana_dashboard_uses_only_metrics_the_server_exposes(real_server: Server) -> None:
    dashboard = json.loads((REPO / "infra" / "grafana-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {name for expr in exprs for name in re.findall(r"\bspace_\w+", expr)}
    exposed = set(scrape(real_server))
    assert used and used <= exposed, used - exposed
