"""chatagent: the chatstack customer-service chat API."""

__version__ = "0.1.0"
