"""Questions the store answers in one call each, as DataFrames and JSON-ready dicts (the CLI prints
them): ``show.py``, everything one run recorded about itself; ``stale.py``, the loads whose
datasets changed since.

Read-only: these modules read the store's tables and write nothing.
"""
from .show import show
from .stale import stale

__all__ = ["show", "stale"]
