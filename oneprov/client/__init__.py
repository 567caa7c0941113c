"""The client side: ``one.py``, the ONE-compatible client over a catalog (what rows answer), a source
(where files are) and ``recorder.py`` (the run and everything recorded in it); ``shapes.py``, what
ONE's methods return."""
from .one import ONE, One
from .recorder import Recorder

__all__ = ["ONE", "One", "Recorder"]
