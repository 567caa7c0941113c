"""What a run records about itself: the script and its git state, where and how it ran.

Collected once, when a run starts (:func:`run_context`), and stored with it (the ``runs`` columns
of schema 0008). Nothing secret: the command line and the git remote go through
:mod:`oneprov.secrets`, and of the ``ONE_*`` settings only those whose names hold no secret
(:func:`oneprov.settings.in_force`).

>>> context = run_context()
>>> sorted(context)[:3]
['argv', 'cwd', 'git_commit']
>>> "oneprov" in context["versions"]
True
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from . import settings
from .secrets import scrub, scrub_argv

#: Packages whose versions a run records: always these, and the IBL libraries when imported.
VERSIONED = ("oneprov", "one-api", "numpy", "pandas", "pyarrow", "sqlalchemy")
IMPORTED_IF_USED = {"ibllib": "ibllib", "brainbox": "ibllib", "iblatlas": "iblatlas", "iblutil": "iblutil"}


def script() -> Path | None:
    """The script this process runs (``python script.py``), or None (an interactive session, ``-c``)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path or not os.path.isfile(path):
        return None
    return Path(path).absolute()


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _git(folder: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=5,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(folder: Path) -> dict[str, Any]:
    """The commit of the git repository holding ``folder``, whether its working tree differs from
    it (``dirty``), and its ``origin`` remote URL with credentials removed; Nones outside git."""
    commit = _git(folder, "rev-parse", "HEAD")
    if commit is None:
        return {"git_commit": None, "git_dirty": None, "git_remote": None}
    status = _git(folder, "status", "--porcelain", "--untracked-files=no")
    remote = _git(folder, "remote", "get-url", "origin")
    return {"git_commit": commit, "git_dirty": bool(status) if status is not None else None,
            "git_remote": scrub(_without_user_info(remote)) if remote else None}


def _without_user_info(url: str) -> str:
    """A remote URL without ``user:password@`` (``https://tok@github.com/x`` -> ``https://github.com/x``)."""
    return re.sub(r"^([a-z][a-z0-9+.-]*://)[^/@]*@", r"\1", url)


def versions() -> dict[str, str]:
    """The versions of Python, oneprov, one-api, numpy, pandas ..., and of the IBL libraries imported."""
    from importlib import metadata
    import platform

    out = {"python": platform.python_version()}
    wanted = list(VERSIONED) + sorted({d for m, d in IMPORTED_IF_USED.items() if m in sys.modules})
    for name in wanted:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def run_context() -> dict[str, Any]:
    """Everything above, as the ``runs`` columns take it."""
    path = script()
    git = git_state(path.parent if path else Path.cwd())
    return {"script_path": str(path) if path else None, "script_sha256": _sha256(path) if path else None, **git,
            "cwd": os.getcwd(), "argv": json.dumps(scrub_argv_list(sys.argv)),
            "settings": json.dumps({k: scrub(v) for k, v in settings.in_force().items()}, sort_keys=True), "versions": versions()}


def scrub_argv_list(argv: list[str]) -> list[str]:
    """``argv`` with secrets hidden, as a list (see :func:`oneprov.secrets.scrub_argv`)."""
    import shlex

    return shlex.split(scrub_argv(argv))


__all__ = ["run_context", "git_state", "versions", "script"]
