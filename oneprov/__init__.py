"""oneprov: a durable, queryable provenance store for ONE data access.

>>> from oneprov import open_store
>>> store = open_store(":memory:")
>>> store.schema_version == store.head_version
True
"""
from .errors import BadInputError, DatabaseError, OneprovError, SchemaVersionError
from .store import Store, open_store

__version__ = "0.1.0"
__all__ = ["ONE", "One", "open_store", "Store", "OneprovError", "BadInputError", "DatabaseError", "SchemaVersionError", "__version__"]


def __getattr__(name: str):
    # The client (and one-api's converters under it) is imported when first asked for, so that the
    # store and its CLI commands do not pay for it at start-up.
    if name in ("ONE", "One"):
        from . import client
        return getattr(client, name)
    raise AttributeError(f"module 'oneprov' has no attribute {name!r}")
