"""Files written from the store: views over what it recorded.

``one_files.py``: ONE's own files, the loaded-UUID CSV lists and ``sessions.pqt``/``datasets.pqt``
cache tables, byte-for-byte usable by one-api.
"""
from .one_files import cache_frames, export_cache, export_loaded_ids, loaded_ids_filename

__all__ = ["cache_frames", "export_cache", "export_loaded_ids", "loaded_ids_filename"]
