"""Whether this worker process is shutting down, so readiness can say so at once.

gunicorn's SIGTERM handler in the worker (service.request_buffering) calls :func:`begin`; from
then on ``/v2/health/ready`` answers 503 ``{"ready": false}`` while the worker finishes the
requests it holds, so a load balancer or Kubernetes stops sending new ones.
"""

from __future__ import annotations

import threading

_draining = threading.Event()


def begin() -> None:
    """Mark this process as draining (idempotent; safe in a signal handler)."""
    _draining.set()


def active() -> bool:
    """True once :func:`begin` was called in this process."""
    return _draining.is_set()
