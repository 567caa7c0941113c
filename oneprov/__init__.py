"""oneprov: a durable, queryable provenance store for ONE data access.

>>> from oneprov import open_store
>>> store = open_store(":memory:")
>>> store.schema_version == store.head_version
True
"""
from .errors import BadInputError, DatabaseError, OneprovError, SchemaVersionError
from .store import Store, open_store
from .client import ONE, One

__version__ = "0.1.0"
__all__ = ["ONE", "One", "open_store", "Store", "OneprovError", "BadInputError", "DatabaseError", "SchemaVersionError", "__version__"]
