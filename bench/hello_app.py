"""Bare FastAPI baseline for bench/chat_throughput.py (same gunicorn config as the service)."""

from fastapi import FastAPI

app = FastAPI()


@app.post("/hello")
async def hello() -> dict[str, str]:
    return {"answer": "hello"}


@app.get("/ready")
async def ready() -> dict[str, str]:
    return {"status": "ready"}
