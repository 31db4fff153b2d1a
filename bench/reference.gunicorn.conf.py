"""service/gunicorn.conf.py for the reference app: every setting the same, minus the model hook.

The service's post_worker_init starts the Predictor's hot reload, which the reference app has not
(the rest of it, freezing the loaded heap and letting the stop signals in, it does too);
everything that shapes throughput (workers, worker class, threads, timeouts, limits) is inherited.
"""

from pathlib import Path

_SERVICE_CONF = Path(__file__).resolve().parent.parent / "service" / "gunicorn.conf.py"
exec(compile(_SERVICE_CONF.read_text(), str(_SERVICE_CONF), "exec"))


def post_worker_init(worker):
    """Nothing to watch: the reference app serves no model; its loaded heap is frozen as the
    service's is (freeze_loaded_heap, from the service's file)."""
    freeze_loaded_heap()  # noqa: F821  (defined by the exec above, as the next one)
    let_stop_signals_in(worker)  # noqa: F821
