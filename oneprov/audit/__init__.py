"""Questions the store answers in one call each, as DataFrames and JSON-ready dicts (the CLI prints
them): ``show.py``, everything one run recorded about itself; ``stale.py``, the loads whose
datasets changed since; ``cutoff.py``, the revision cutoff dates that reproduce a run;
``diff.py``, what changed between two runs and why.

Read-only: these modules read the store's tables and write nothing.
"""
from .cutoff import cutoff
from .diff import diff
from .show import show
from .stale import stale

__all__ = ["cutoff", "diff", "show", "stale"]
