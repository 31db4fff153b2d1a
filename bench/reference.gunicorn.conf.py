"""service/gunicorn.conf.py for the reference app: every setting the same, minus the model hook.

The service's post_worker_init starts the Predictor's hot reload, which the reference app has not;
everything that shapes throughput (workers, worker class, threads, timeouts, limits) is inherited.
"""

from pathlib import Path

_SERVICE_CONF = Path(__file__).resolve().parent.parent / "service" / "gunicorn.conf.py"
exec(compile(_SERVICE_CONF.read_text(), str(_SERVICE_CONF), "exec"))


def post_worker_init(worker):
    """Nothing to watch: the reference app serves no model."""
