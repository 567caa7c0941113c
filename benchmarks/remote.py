"""Section 'remote' of benchmarks/run.py: oneprov's remote mode against one-api's ``OneAlyx``, side
by side on the same test Alyx on 127.0.0.1 (tests/alyx_server.py), in one run.

Measured: ``search`` and ``list_datasets(eid)`` through REST (every call reaches the server: the
REST cache is off for both clients; oneprov records each answer), downloading every file of the
repository (N files of a fixed size, a fresh cache folder for each client), and re-opening
oneprov in local mode on what was downloaded. Two scales: the small repository (6 sessions), and
one of 15 sessions whose files are enlarged (smoke: 20 files of 64 KiB; medium and full: 200 files
of 1 MiB).
"""
from __future__ import annotations

import hashlib
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import benchlib as bl
from benchlib import fmt_seconds, measure

CREDENTIALS = {"username": "test_user", "password": "TapetesBloc18"}
#: Targets of the issue: REST calls within 1.1x of one-api's time, downloads no slower, re-opening < 0.1 s.
REST_RATIO, DOWNLOAD_RATIO, REOPEN_S = 1.1, 1.0, 0.1


def _server_repo(root: Path, n_files: int, size: int, sessions: tuple[int, int]) -> Any:
    """A synthetic repository whose first ``n_files`` present files are rewritten with ``size``
    random bytes (their records updated)."""
    import numpy as np

    from oneprov.synthetic import make_repository

    repo = make_repository(root, n_subjects=sessions[0], sessions_per_subject=sessions[1])
    rng = np.random.default_rng(0)
    enlarged = 0
    for i, did in enumerate(repo.datasets["id"]):
        path = repo.dataset_path(did)
        if enlarged >= n_files or not path.is_file():
            continue
        data = rng.bytes(size)
        path.write_bytes(data)
        repo.datasets.loc[i, "file_size"] = size
        repo.datasets.loc[i, "hash"] = hashlib.md5(data).hexdigest()
        enlarged += 1
    repo.enlarged = enlarged
    return repo


def section_remote(ctx: Any, Row: Any) -> None:
    """Add the rows of this section to ``ctx`` (run.py's Context), made with ``Row`` (run.py's)."""
    sys.path.insert(0, str(bl.REPO / "tests"))
    from alyx_server import AlyxServer
    from one.api import OneAlyx

    from oneprov import ONE

    small = ctx.scale.name == "smoke"
    n_files, size = (20, 64 << 10) if small else (200, 1 << 20)
    work = Path(ctx.ws.root) / "remote"
    home, old_home = work / "home", os.environ.get("HOME")
    home.mkdir(parents=True, exist_ok=True)
    os.environ["HOME"] = str(home)   # one-api's parameters for the test Alyx, not the user's
    try:
        for label, sessions in (("6 sessions", (3, 2)), ("15 sessions", (5, 3))):
            repo = _server_repo(work / f"server-{sessions[0]}", n_files if sessions[0] == 5 else 0, size, sessions)
            with AlyxServer(repo) as alyx, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                alyx.one_params(work / f"peer-{sessions[0]}")
                _compare(ctx, Row, alyx, repo, work, label, sessions[0], OneAlyx, ONE,
                         downloads=(n_files, size) if sessions[0] == 5 else None)
    finally:
        if old_home is None:
            os.environ.pop("HOME", None)
        else:
            os.environ["HOME"] = old_home


def _compare(ctx: Any, Row: Any, alyx: Any, repo: Any, work: Path, label: str, key: int, OneAlyx: Any, ONE: Any,
             downloads: tuple[int, int] | None) -> None:
    def peer(folder: str) -> Any:
        (work / folder).mkdir(exist_ok=True)
        return OneAlyx(base_url=alyx.url, silent=True, cache_dir=work / folder, cache_rest=None, **CREDENTIALS)

    def ours(folder: str, db: str) -> Any:
        return ONE(base_url=alyx.url, silent=True, cache_dir=work / folder, db=work / db, cache_rest=None,
                   project="bench", label="remote", **CREDENTIALS)

    theirs, mine = peer(f"peer-{key}"), ours(f"ours-{key}", f"remote-{key}.sqlite")
    subject = repo.sessions["subject"].iloc[0]
    eids = list(repo.sessions["id"])
    kw = ctx.repeats(len(eids))
    t_api = measure(lambda: theirs.search(subject=subject), **kw)
    t_prov = measure(lambda: mine.search(subject=subject), **kw)
    same = {str(e) for e in t_api.result} == {str(e) for e in t_prov.result}
    ctx.add(Row("9 remote", f"search(subject) through REST, {label}", "one-api", t_api.median, t_prov.median, "s",
                f"ratio ≤ {REST_RATIO}", t_prov.median <= REST_RATIO * t_api.median,
                f"{'same' if same else 'DIFFERENT'} eids; oneprov {t_prov.describe()}, one-api {t_api.describe()}"))
    # one-api 3.6.1 on pandas 3 cannot list a session twice in one client: each call lists another session
    order_api, order_prov = iter(eids * 50), iter(eids * 50)
    t_api = measure(lambda: theirs.list_datasets(next(order_api)), repeats=len(eids), budget_s=ctx.scale.budget_s)
    t_prov = measure(lambda: mine.list_datasets(next(order_prov)), repeats=len(eids), budget_s=ctx.scale.budget_s)
    ctx.add(Row("9 remote", f"list_datasets(eid) through REST, {label}", "one-api", t_api.median, t_prov.median, "s",
                f"ratio ≤ {REST_RATIO}", t_prov.median <= REST_RATIO * t_api.median,
                f"oneprov {t_prov.describe()}, one-api {t_api.describe()}"))
    if downloads is None:
        return
    n_files, size = repo.enlarged, downloads[1]

    def download_all(client: Any) -> float:
        started = time.perf_counter()
        for eid in eids:
            listed = client.list_datasets(eid, qc="CRITICAL")
            client.load_datasets(eid, listed, download_only=True, assert_present=False)
        return time.perf_counter() - started

    api_s = download_all(peer(f"peer-dl-{key}"))
    fresh = ours(f"ours-dl-{key}", f"remote-dl-{key}.sqlite")
    prov_s = download_all(fresh)
    fresh.close()
    got = sum(1 for p in (work / f"ours-dl-{key}").rglob("*") if p.is_file() and p.stat().st_size == size)
    ctx.add(Row("9 remote", f"download every file ({n_files} of {size >> 10} KiB among {len(repo.datasets)})",
                "one-api", api_s, prov_s, "s", f"ratio ≤ {DOWNLOAD_RATIO}", prov_s <= DOWNLOAD_RATIO * api_s,
                f"{got} files of {size >> 10} KiB in oneprov's cache; md5 checked by both; oneprov also records "
                "each download and load"))
    started = time.perf_counter()
    offline = ONE(cache_dir=work / f"ours-dl-{key}", mode="local", db=work / f"remote-dl-{key}.sqlite")
    reopen = time.perf_counter() - started
    listed = offline.list_datasets(eids[0])
    offline.close()
    ctx.add(Row("9 remote", "re-open in local mode on what was recorded", "", None, reopen, "s",
                f"< {REOPEN_S:g} s", reopen < REOPEN_S, f"{len(listed)} datasets listed offline afterwards; "
                f"{fmt_seconds(reopen)}"))
