"""DELETE /feedback/<request_id> on the real app when the store is off: the admin rule first, then
a 503 saying the store is off (the route on a real gunicorn and database:
tests/integration/test_feedback_store.py)."""

from __future__ import annotations

from service.app import create_app
from service.config import ServiceConfig
from service.store.config import StoreConfig
from tests.conftest import COMMITTED_MODELS


def test_with_the_store_off_the_route_still_checks_the_token_then_answers_503() -> None:
    config = ServiceConfig(
        model_dir=COMMITTED_MODELS, admin_token="secret", store=StoreConfig(enabled=False)
    )
    client = create_app(config).test_client()
    refused = client.delete("/feedback/abc")
    assert refused.status_code == 401 and refused.get_json()["error"]["code"] == "unauthorized"
    off = client.delete("/feedback/abc", headers={"Authorization": "Bearer secret"})
    assert off.status_code == 503
    assert off.get_json()["error"]["code"] == "store_unavailable"
    assert "STORE=off" in off.get_json()["error"]["message"]
