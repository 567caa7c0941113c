"""Where a client's files come from, beneath the client: ``local.py``, an ALF tree on this machine."""
from .local import Fetched, LocalSource

__all__ = ["Fetched", "LocalSource"]
