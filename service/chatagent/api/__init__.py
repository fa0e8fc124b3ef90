"""HTTP routers: chat, OpenAI-compatible, sessions + feedback, health/ready/metrics."""
