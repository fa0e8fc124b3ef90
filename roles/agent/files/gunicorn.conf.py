"""Fallback Gunicorn settings, used only when the service tree ships no gunicorn.conf.py.

Values come from CHATAGENT_* variables (the env file); the command line may override bind.
"""
import multiprocessing
import os

bind = os.environ.get("CHATAGENT_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("CHATAGENT_WORKERS") or min(2 * multiprocessing.cpu_count() + 1, 8))
worker_class = "uvicorn_worker.UvicornWorker"
timeout = int(os.environ.get("CHATAGENT_TIMEOUT", "120"))
graceful_timeout = int(os.environ.get("CHATAGENT_GRACEFUL_TIMEOUT", "30"))
keepalive = 5
max_requests = int(os.environ.get("CHATAGENT_MAX_REQUESTS", "2000"))
max_requests_jitter = int(os.environ.get("CHATAGENT_MAX_REQUESTS_JITTER", "200"))
forwarded_allow_ips = os.environ.get("CHATAGENT_FORWARDED_ALLOW_IPS", "127.0.0.1")
accesslog = None
errorlog = "-"
preload_app = False


def child_exit(server, worker):  # noqa: ARG001 - Gunicorn hook signature
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
