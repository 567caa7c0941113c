"""``oneprov demo``: the seed's example ("Recording data access"), offline, against oneprov.

It makes a small ALF repository with ONE cache tables, runs the seed's analysis through
``oneprov.ONE`` (record, load an object and a dataset, save the loaded ids, save the access tables,
reload them in local mode, load with ``ONE_REVISION_LAST_BEFORE``), and ends with an audit in SQL.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

import pandas as pd

from . import settings
from .client import ONE
from .errors import ALFObjectNotFound
from .store.sql import read_only_query
from .synthetic import make_repository

AUDIT = """
SELECT l.rel_path, l.revision, d.qc, COUNT(DISTINCT l.run_id) AS runs
FROM loaded_datasets l JOIN datasets d ON d.id = l.dataset_uuid
GROUP BY l.rel_path, l.revision, d.qc ORDER BY l.rel_path
"""


def run_demo(folder: str | os.PathLike | None = None, echo: Callable[[str], None] = print) -> Path:
    """Run the demo in ``folder`` (a new temporary folder by default) and return the folder."""
    root = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="oneprov-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    cache = root / "alf_cache"
    info = make_repository(cache)
    echo(f"Made an ALF repository of {len(info.sessions)} sessions and {len(info.datasets)} datasets in {cache}")
    saved_cutoff = os.environ.pop(settings.REVISION_CUTOFF_ENV, None)
    try:
        _seed_example(info, cache, root, echo)
    finally:
        if saved_cutoff is not None:
            os.environ[settings.REVISION_CUTOFF_ENV] = saved_cutoff
    return root


def _seed_example(info, cache: Path, root: Path, echo: Callable[[str], None]) -> None:
    pd.set_option("display.width", 160)
    one = ONE(cache_dir=cache, mode="local", project="demo", label="seed-example")
    echo(f"Provenance database: {one.store.engine.url.database}\n")
    one.record_loaded = True

    ses = info.sessions.set_index("id").loc[info.eid]
    eid = f"{ses.subject}/{ses.date}/{ses.number:03d}"
    trials = one.load_object(eid, "trials")
    echo(f"load_object({eid!r}, 'trials') -> {sorted(trials)}")
    other = info.eids[1] if len(info.eids) > 1 else info.eid
    description = one.load_dataset(other, "probes.description")
    echo(f"load_dataset({other!r}, 'probes.description') -> {type(description).__name__}")
    spikes = one.load_dataset(eid, "spikes.times.npy", collection="alf/probe00/pykilosort")
    echo(f"load_dataset(..., 'spikes.times.npy') -> default revision, first values {spikes[:3].round(3)}")
    for name in ("trials.stimOn_times.npy", "licks.times.npy"):
        try:
            one.load_dataset(eid, name)
        except ALFObjectNotFound as err:
            echo(f"load_dataset(..., {name!r}) -> ALFObjectNotFound ({err.message}); the attempt is recorded")

    dataset_uuids, filename = one.save_loaded_ids(clear_list=False)
    echo(f"\nsave_loaded_ids -> {filename}\n{pd.read_csv(filename)}\n")
    session_uuids, filename = one.save_loaded_ids(sessions_only=True)
    echo(f"save_loaded_ids(sessions_only=True) -> {filename}\n{pd.read_csv(filename)}\n")

    tables = root / "my_analysis_tables"
    tables.mkdir(exist_ok=True)
    one.save_cache(tables, clobber=True)
    echo(f"save_cache -> {sorted(p.name for p in tables.glob('*.pqt'))} in {tables}")
    frozen = ONE(cache_dir=cache, mode="local", tables_dir=tables, project="demo", label="reload")
    echo(f"reloaded in local mode from {tables.name}: {len(frozen.search())} sessions")

    os.environ[settings.REVISION_CUTOFF_ENV] = "2024-04-01"
    listed = frozen.list_datasets(eid, filename="spikes.times.npy", collection="alf/probe00/pykilosort")
    echo(f"with ONE_REVISION_LAST_BEFORE=2024-04-01, list_datasets shows {listed}")
    path = frozen.load_dataset(eid, "spikes.times.npy", collection="alf/probe00/pykilosort", download_only=True)
    echo(f"and load_dataset loads the older revision: {path.relative_to(frozen.eid2path(frozen.to_eid(eid)))}")
    del os.environ[settings.REVISION_CUTOFF_ENV]
    frozen.close()
    one.close()

    db = cache / "provenance.sqlite"
    audit = read_only_query(db, AUDIT)
    echo(f"\nAudit: which datasets, in which revision, did the analysis load?\n  oneprov sql \"{' '.join(AUDIT.split())}\" --db {db}\n")
    echo(audit.to_string(index=False))
    log = read_only_query(db, "SELECT outcome, COUNT(*) AS n FROM access_log GROUP BY outcome ORDER BY outcome")
    echo(f"\nEvery load attempt, by outcome (access_log):\n{log.to_string(index=False)}")
    echo(f"\nFiles: ALF tree and tables in {cache}, saved tables in {tables}, database {db}")
