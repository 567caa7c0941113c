"""Files written from the store: views over what it recorded.

``one_files.py``: ONE's own files, the loaded-UUID CSV lists and ``sessions.pqt``/``datasets.pqt``
cache tables, byte-for-byte usable by one-api; ``selection.py``, the runs, loads and files of a run,
a scope or a label; ``prov_json.py``, W3C PROV-JSON of them; ``rocrate.py``, an RO-Crate of them.
"""
from .one_files import cache_frames, export_cache, export_loaded_ids, loaded_ids_filename

__all__ = ["cache_frames", "export_cache", "export_loaded_ids", "loaded_ids_filename"]
