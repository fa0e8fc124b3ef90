"""Module-level ASGI entry for servers that want `module:app` (e.g. `gunicorn chatagent.asgi:app`)."""

from .app import create_app

app = create_app()
