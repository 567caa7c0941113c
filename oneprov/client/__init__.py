"""The client side: ``one.py``, the ONE-compatible client over a catalog (what rows answer), a source
(where files are) and ``recorder.py`` (the run and everything recorded in it); ``shapes.py``, what
ONE's methods return; ``remote.py``, the REST answers of a remote client; ``one_api.py``, the
recording of an unmodified one-api instance (``oneprov.record(one)``)."""
from .one import ONE, One
from .one_api import Recording, UnsupportedOneApi, record
from .recorder import Recorder

__all__ = ["ONE", "One", "Recorder", "Recording", "UnsupportedOneApi", "record"]
