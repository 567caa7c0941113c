"""ONE's artefacts as views over the store: loaded-UUID CSV lists and ``sessions.pqt``/``datasets.pqt``.

Every file is written atomically (a temporary file, then a rename) and recorded in the ``exports``
table with its row count and sha256.

>>> from oneprov import open_store
>>> store = open_store(":memory:")
>>> export_loaded_ids(store, "/tmp")   # nothing loaded yet: a warning, no file
([], None)
"""
from __future__ import annotations

import os
import warnings
from datetime import datetime
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from . import tables
from .files import write_atomically
from .errors import BadInputError
from .schema import access_events, dataset_history, datasets, queries, query_datasets, query_sessions, sessions
from .store import Store

SESSION_COLUMNS = ["id", "lab", "subject", "date", "number", "task_protocol", "projects"]
DATASET_COLUMNS = ["eid", "id", "rel_path", "file_size", "hash", "exists", "qc", "default_revision"]


def loaded_ids_filename(sessions_only: bool, when: datetime | None = None) -> str:
    """ONE's file name for a loaded-ids list: ``<YYYY-MM-DDTHH-MM-SS>_loaded_dataset_uuids.csv``."""
    stamp = (when or datetime.now()).strftime("%Y-%m-%dT%H-%M-%S")
    return f"{stamp}_loaded_{'session' if sessions_only else 'dataset'}_uuids.csv"


def export_loaded_ids(
    store: Store,
    directory: str | os.PathLike | None = None,
    *,
    path: str | os.PathLike | None = None,
    run: str | None = None,
    project: str | None = None,
    label: str | None = None,
    scope: str | None = None,
    sessions_only: bool = False,
    since_clear: bool = False,
    listed_only: bool = False,
) -> tuple[list[str], Path | None]:
    """Write the UUIDs of loaded datasets (or their sessions) as ONE's CSV; return ``(ids, path)``.

    The file goes to ``path`` if given, else to ``directory`` under ONE's time-stamped name; when that
    name is taken (two saves in one second) a counter is added to the time stamp rather than
    overwriting. The filters are those of :meth:`Store.loaded_ids`. With nothing loaded: a
    warning, ``([], None)`` and no file, as ONE does.
    """
    if path is not None:
        target = Path(path).expanduser().absolute()
    elif directory is not None:
        target = Path(directory).expanduser().absolute() / loaded_ids_filename(sessions_only)
    else:
        raise BadInputError("export_loaded_ids needs a directory or a path")
    if not target.parent.is_dir():
        raise BadInputError(f"cannot write {str(target)!r}: folder {str(target.parent)!r} does not exist")
    ids = store.loaded_ids(run=run, project=project, label=label, scope=scope,
                           sessions_only=sessions_only, since_clear=since_clear, listed_only=listed_only)
    if not ids:
        warnings.warn("No datasets loaded; check that the `record_loaded` attribute is True "
                      "and that the filters match a run", stacklevel=2)
        return [], None
    header = "session_uuid" if sessions_only else "dataset_uuid"
    data = (header + "\n" + "".join(f"{i}\n" for i in ids)).encode()
    if path is not None:
        write_atomically(target, lambda f: f.write(data))
    else:
        stamp, rest = target.name.split("_", 1)
        n = 1
        while not write_atomically(target, lambda f: f.write(data), overwrite=False):
            n += 1
            target = target.with_name(f"{stamp}-{n}_{rest}")
    with store.transaction() as conn:
        store.record_export(conn, kind="loaded_session_ids" if sessions_only else "loaded_dataset_ids",
                            path=target, rows=len(ids), run_id=run,
                            params={"project": project, "label": label, "scope": scope, "since_clear": since_clear})
    return ids, target


def cache_frames(store: Store, run: str | None = None, query: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The sessions and datasets to export, in the normalised layout of :mod:`oneprov.tables`.

    Without ``run``: every session and dataset in the store (or only those ``query`` returned, e.g.
    one import of cache tables), in its current state. With ``run``: exactly the sessions and
    datasets that run queried or loaded, each dataset in the latest state the run saw it in.
    """
    d = datasets.c
    if run is None:
        ds = sa.select(d.session_id.label("eid"), d.id, d.rel_path, d.file_size, d.hash, d.exists, d.qc,
                       d.default_revision)
        ss = sa.select(*(sessions.c[c] for c in SESSION_COLUMNS))
        if query is not None:
            ds = ds.where(d.id.in_(sa.select(query_datasets.c.dataset_id).where(query_datasets.c.query_id == query)))
            ss = ss.where(sessions.c.id.in_(sa.select(query_sessions.c.session_id)
                                            .where(query_sessions.c.query_id == query)))
    else:
        seen = sa.union_all(
            sa.select(query_datasets.c.dataset_id, query_datasets.c.state_id)
            .join(queries, queries.c.id == query_datasets.c.query_id).where(queries.c.run_id == run),
            sa.select(access_events.c.dataset_id, access_events.c.state_id)
            .where(access_events.c.run_id == run, access_events.c.dataset_id.is_not(None)),
        ).subquery("seen")
        latest = (sa.select(seen.c.dataset_id, sa.func.max(seen.c.state_id).label("state_id"))
                  .group_by(seen.c.dataset_id).subquery("latest"))
        state = dataset_history.alias("state")
        s = state.c
        ds = (sa.select(d.session_id.label("eid"), d.id, d.rel_path,
                        sa.case((s.id.is_(None), d.file_size), else_=s.file_size).label("file_size"),
                        sa.case((s.id.is_(None), d.hash), else_=s.hash).label("hash"),
                        sa.func.coalesce(s.exists, d.exists).label("exists"),
                        sa.func.coalesce(s.qc, d.qc).label("qc"),
                        sa.case((s.id.is_(None), d.default_revision), else_=s.default_revision).label("default_revision"))
              .select_from(latest.join(datasets, d.id == latest.c.dataset_id)
                           .join(state, s.id == latest.c.state_id, isouter=True)))
        queried = (sa.select(query_sessions.c.session_id).join(queries, queries.c.id == query_sessions.c.query_id)
                   .where(queries.c.run_id == run))
        session_ids = sa.union(queried, sa.select(d.session_id).join(latest, latest.c.dataset_id == d.id))
        ss = sa.select(*(sessions.c[c] for c in SESSION_COLUMNS)).where(sessions.c.id.in_(session_ids))
    ds_frame = store._frame(ds.order_by(d.session_id, d.id) if run is None else ds)
    ss_frame = store._frame(ss.order_by(sessions.c.id))
    return ss_frame, ds_frame


def export_cache(
    store: Store,
    out_dir: str | os.PathLike,
    *,
    run: str | None = None,
    query: int | None = None,
    clobber: bool = False,
    origin: str = "oneprov",
) -> dict[str, Path]:
    """Write ONE-format ``sessions.pqt`` and ``datasets.pqt`` into ``out_dir``; return their paths.

    The tables load in one-api's local mode. Without ``clobber`` they are merged with tables
    already in the folder, as ONE's ``save_cache`` does (rows updated by id, new rows appended,
    the earliest ``date_created`` kept, ``date_modified`` set); ``default_revision`` is always kept.
    """
    folder = Path(out_dir).expanduser().absolute()
    if not folder.is_dir():
        raise BadInputError(f"export folder {str(folder)!r} does not exist")
    ses, dsets = cache_frames(store, run, query)
    written = {}
    for name, frame, write in (("sessions", ses, tables.write_sessions), ("datasets", dsets, tables.write_datasets)):
        target = folder / f"{name}.pqt"
        meta = {"origin": origin}
        if not clobber and target.exists():
            old = tables.read_sessions(target) if name == "sessions" else pd.concat(tables.iter_datasets(target))
            frame = tables.merge_tables(old, frame, name)
            meta = tables.merge_metadata(tables.read_metadata(target), meta)
        result = write(frame, target, meta)
        with store.transaction() as conn:
            store.record_export(conn, kind=f"{name}_table", path=target, rows=result.rows, run_id=run,
                                params={"clobber": clobber})
        written[name] = target
    return written
