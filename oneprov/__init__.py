"""oneprov: a durable, queryable provenance store for ONE data access.

>>> from oneprov import open_store
>>> store = open_store(":memory:")
>>> store.schema_version == store.head_version
True
"""
from .errors import BadInputError, DatabaseError, OneprovError, SchemaVersionError

__version__ = "0.1.0"
__all__ = ["ONE", "One", "record", "UnsupportedOneApi", "open_store", "Store", "OneprovError", "BadInputError", "DatabaseError", "SchemaVersionError", "__version__"]


def __getattr__(name: str):
    # The store and the client are imported when first asked for: `import oneprov` stays light (the
    # command line then starts without one-api's converters, and Ctrl-C at start-up is handled).
    if name in ("Store", "open_store"):
        from . import store
        return getattr(store, name)
    if name in ("ONE", "One", "record", "Recording", "UnsupportedOneApi"):
        from . import client
        return getattr(client, name)
    raise AttributeError(f"module 'oneprov' has no attribute {name!r}")
