"""GET /metrics: the Prometheus exposition of every worker's metrics, as a Flask blueprint."""

from __future__ import annotations

from flask import Blueprint, Response, request

from service.observability.metrics import ScrapeFigures, exposition, service_metrics


def create_blueprint(figures: ScrapeFigures | None = None) -> Blueprint:
    """GET /metrics (service.observability.wsgi counts and times the requests themselves);
    ``figures`` adds the series computed at scrape time (live accuracy, drift)."""
    service_metrics()
    blueprint = Blueprint("metrics", __name__)

    @blueprint.get("/metrics")
    def metrics_view() -> Response:
        body, content_type = exposition(request.headers.get("Accept"), figures)
        return Response(body, content_type=content_type)

    return blueprint
