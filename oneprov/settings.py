"""The environment variables oneprov reads, in one place, each read when it is needed (never at import).

- ``ONEPROV_DB``: the database when none is given (a SQLite path or a SQLAlchemy URL).
- ``ONEPROV_PROJECT``: the project of new runs when none is given (else ``"default"``).
- ``ONE_CACHE_DIR``: ONE's cache folder when a client is given none.
- ``ONE_REVISION_LAST_BEFORE``: ONE's revision cutoff; one-api reads it once, at import, oneprov at
  every call, and records it with the run and each event.
- ``ONE_HTTP_DL_THREADS``: parallel downloads in remote mode (one-api's variable; default 4).
- every other ``ONE_*``/``ONEPROV_*`` setting whose name suggests no secret: recorded with a run.

>>> import os
>>> os.environ["ONEPROV_PROJECT"] = "paper1"
>>> project(None), project("mine")
('paper1', 'mine')
>>> del os.environ["ONEPROV_PROJECT"]
>>> project(None)
'default'
"""
from __future__ import annotations

import os
import re

from .errors import BadInputError

DB_ENV = "ONEPROV_DB"
PROJECT_ENV = "ONEPROV_PROJECT"
CACHE_DIR_ENV = "ONE_CACHE_DIR"
REVISION_CUTOFF_ENV = "ONE_REVISION_LAST_BEFORE"
DOWNLOAD_THREADS_ENV = "ONE_HTTP_DL_THREADS"
DEFAULT_PROJECT = "default"
DEFAULT_DOWNLOAD_THREADS = 4   # one-api's


def _read(name: str) -> str | None:
    return os.environ.get(name) or None


def database() -> str | None:
    """``$ONEPROV_DB``, or None when it is unset or empty."""
    return _read(DB_ENV)


def project(given: str | None = None) -> str:
    """The project of a new run: ``given``, else ``$ONEPROV_PROJECT``, else ``"default"``.

    A blank ``given`` is refused (it is not "no project"): ``None`` means "not given".
    """
    if given is not None and not str(given).strip():
        raise BadInputError(f"project {given!r}: a project needs a name (leave it out for ${PROJECT_ENV} "
                            f"or {DEFAULT_PROJECT!r})")
    return given or _read(PROJECT_ENV) or DEFAULT_PROJECT


def cache_dir() -> str | None:
    """``$ONE_CACHE_DIR``, or None."""
    return _read(CACHE_DIR_ENV)


def revision_cutoff() -> str | None:
    """``$ONE_REVISION_LAST_BEFORE``, read now, or None."""
    return _read(REVISION_CUTOFF_ENV)


def download_threads() -> int:
    """Parallel downloads in remote mode: ``$ONE_HTTP_DL_THREADS`` (one-api's variable), else 4."""
    value = _read(DOWNLOAD_THREADS_ENV)
    try:
        return max(1, int(value)) if value else DEFAULT_DOWNLOAD_THREADS
    except ValueError:
        raise BadInputError(f"${DOWNLOAD_THREADS_ENV}={value!r}: expected a number of parallel downloads") from None


_SECRET_NAME = re.compile(r"(?i)pass|pwd|token|secret|key|auth|credential")


def in_force() -> dict[str, str]:
    """The ``ONE_*`` and ``ONEPROV_*`` environment settings in force (a run records them), but none
    whose name suggests a secret."""
    return {k: v for k, v in sorted(os.environ.items())
            if k.startswith(("ONE_", "ONEPROV_")) and not _SECRET_NAME.search(k)}
