"""Errors raised while building or loading a knowledge base."""


class KBError(RuntimeError):
    pass


class KBMismatchError(KBError):
    """The index on disk was built with another embedder/dimension (or format) than the one configured."""
