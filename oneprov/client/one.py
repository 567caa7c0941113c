"""``from oneprov import ONE``: ONE's local-mode API, with every search and load recorded.

The client resolves datasets in the store (SQL), reads the files, and records what happened: every
search and list is a query with the rows it returned, every load attempt an access event with its
outcome. Each call is one transaction, committed before the call returns. A run is started by the
first recorded call and closed at exit ('finished', or 'failed' when an exception ends the process).

>>> import tempfile
>>> from oneprov.synthetic import make_repository
>>> repo = make_repository(tempfile.mkdtemp())          # a small ALF tree with ONE cache tables
>>> one = ONE(cache_dir=repo.root, mode="local")
>>> one.record_loaded = True
>>> trials = one.load_object(repo.eid, "trials")
>>> ids, path = one.save_loaded_ids()
>>> path.name.endswith("_loaded_dataset_uuids.csv")
True

Deliberate differences from one-api are listed in the README ("Differences from ONE").
"""
from __future__ import annotations

import contextlib
import gc
import os
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from .. import alf, export, files, settings
from ..errors import (
    ALFError, ALFMultipleCollectionsFound, ALFMultipleObjectsFound, ALFObjectNotFound, ALFWarning,
    BadInputError,
)
from ..sources.local import LocalSource
from ..store import Store, open_store
from ..store.catalog import DATASET_COLUMNS, Catalog
from .recorder import Recorder
from .shapes import SEARCH_TERMS, Bunch, autocomplete, dataset_frame, load_object, session_frame

__all__ = ["ONE", "One", "Bunch"]


class ONE:
    """A ONE client in local mode whose every search and load is recorded in a provenance store.

    ``cache_dir`` holds the ALF tree (``<lab>/Subjects/<subject>/<date>/<NNN>/<rel_path>``);
    ``tables_dir`` (default ``cache_dir``) the ONE cache tables, imported into the store when they
    changed. ``db`` defaults to ``$ONEPROV_DB``, else ``<cache_dir>/provenance.sqlite``; ``project``
    to ``$ONEPROV_PROJECT``, else "default"; ``label`` names the run.

    The client asks its catalog (the rows of the tables it imported) which datasets answer a call,
    its source where their files are, and its recorder to record what happened.
    """

    def __init__(self, cache_dir: str | os.PathLike | None = None, mode: str = "local",
                 tables_dir: str | os.PathLike | None = None, db: Any = None, project: str | None = None,
                 label: str | None = None, wildcards: bool = True, **kwargs: Any):
        if mode != "local":
            raise NotImplementedError(f"mode={mode!r}: oneprov's ONE works in local mode only for now; use mode='local'")
        if kwargs:
            raise TypeError(f"unexpected argument {sorted(kwargs)[0]!r}")
        cache_dir = cache_dir or settings.cache_dir()
        if not cache_dir:
            raise BadInputError(f"ONE needs a cache_dir (the folder of the ALF tree), or set {settings.CACHE_DIR_ENV}")
        self.cache_dir = Path(cache_dir).expanduser().absolute()
        if not self.cache_dir.is_dir():
            raise BadInputError(f"cache_dir {str(self.cache_dir)!r} does not exist")
        self.mode = mode
        self.wildcards = wildcards
        self.record_loaded = False
        self._tables_dir = Path(tables_dir).expanduser().absolute() if tables_dir else self.cache_dir
        self.store: Store = open_store(db or settings.database() or self.cache_dir / "provenance.sqlite")
        self._source = LocalSource(self.cache_dir)
        self._recorder = Recorder(self.store, project, label, cache_dir=self.cache_dir)
        self._catalog = Catalog(self.store, None)
        self._folders: dict[str, Path] = {}   # eid -> session folder, for the current catalog
        self.load_cache(self._tables_dir)

    def __repr__(self) -> str:
        return f"ONE(cache_dir={str(self.cache_dir)!r}, mode='local', db={self.store!r})"

    @property
    def offline(self) -> bool:
        return True

    # -- the run and its records ------------------------------------------------------------

    @property
    def project(self) -> str:
        return self._recorder.project

    @property
    def label(self) -> str | None:
        return self._recorder.label

    @property
    def run_id(self) -> str | None:
        """The id of this client's run, once its first call was recorded (else None)."""
        return self._recorder.run_id

    def close(self, error: BaseException | None = None) -> None:
        """Close the run ('finished', or 'failed' with ``error``) and release the database."""
        self._recorder.close(error)
        self.store.close()

    def __enter__(self) -> "ONE":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(exc)

    @contextlib.contextmanager
    def scope(self, name: str) -> Iterator["ONE"]:
        """Record every search and load inside the block under a scope name (e.g. a figure)."""
        with self._recorder.scope(name):
            yield self

    def _event(self, method: str, outcome: str, row: Any = None, **details: Any) -> dict[str, Any]:
        return self._recorder.event(method, outcome, row, listed=self.record_loaded, **details)

    def _record_query(self, method: str, params: dict[str, Any], started: float, **rows: Any) -> None:
        self._recorder.record_query(method, params, started, mode=self.mode, **rows)

    # -- cache tables -----------------------------------------------------------------------

    def load_cache(self, tables_dir: str | os.PathLike | None = None) -> None:
        """Import the cache tables of ``tables_dir`` (default: this client's) and answer from them.

        Unlike ONE, the loaded-ids list and every record survive (they are in the database).
        """
        folder = Path(tables_dir).expanduser().absolute() if tables_dir else self._tables_dir
        if not (folder / "sessions.pqt").exists() and not (folder / "datasets.pqt").exists():
            warnings.warn(f"no cache tables in {folder}; the client sees no sessions", ALFWarning, stacklevel=2)
            self._catalog = Catalog(self.store, None)
            return
        result = self.store.import_cache(folder)
        self._tables_dir = folder
        self._catalog = Catalog(self.store, result.query_id)
        self._folders = {}

    def reset_cache(self) -> None:
        """Forget the loaded tables (the client then sees nothing); records and the list remain."""
        self._catalog = Catalog(self.store, None)
        self._folders = {}

    def save_cache(self, save_dir: str | os.PathLike | None = None, clobber: bool = False) -> dict[str, Path]:
        """Write the client's tables as ONE-format ``sessions.pqt``/``datasets.pqt``.

        Merged with tables already in ``save_dir`` (default ``cache_dir``) unless ``clobber``;
        ``default_revision`` is always kept. Unlike ONE, it always writes.
        """
        return export.export_cache(self.store, Path(save_dir or self.cache_dir), query=self._catalog.query_id,
                                   clobber=clobber, origin=str(self.cache_dir))

    def save_loaded_ids(self, sessions_only: bool = False, clear_list: bool = True,
                        path: str | os.PathLike | None = None) -> tuple[list[str], Path | None]:
        """Write the current list of loaded dataset (or session) UUIDs in ONE's CSV format.

        The list holds the datasets loaded by this run with ``record_loaded`` on since the last
        clear. The file goes to ``path`` if given, else ONE's time-stamped name in ``tables_dir``.
        ``clear_list`` starts a new list; the history stays in the database.
        """
        if self.run_id is None:
            warnings.warn("No datasets loaded; check that the `record_loaded` attribute is True", stacklevel=2)
            return [], None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ids, written = export.export_loaded_ids(
                self.store, self._tables_dir, path=path, run=self.run_id, sessions_only=sessions_only,
                since_clear=True, listed_only=True)
        if written is None:
            warnings.warn("No datasets loaded; check that the `record_loaded` attribute is True", stacklevel=2)
        for w in caught:
            if "No datasets loaded" not in str(w.message):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if clear_list and written is not None:
            self._recorder.mark("clear_list")
        return ids, written

    # -- ids and paths ----------------------------------------------------------------------

    def to_eid(self, id: Any) -> str | None:
        """An eid from a UUID, a UUID string, or a session path / ``subject/date/number`` string."""
        if id is None:
            return None
        if isinstance(id, uuid.UUID):
            return str(id)
        text = str(id)
        if alf.UUID_RE.match(text.strip().lower()):
            return text.strip().lower()
        if isinstance(id, (str, os.PathLike)):
            return self.path2eid(id)
        return None

    def _eid(self, id: Any) -> str:
        eid = self.to_eid(id)
        if eid is None:
            raise ValueError(f"cannot parse session ID {id!r}: give an eid (UUID) or a 'subject/date/number' path")
        return eid

    def path2eid(self, path_obj: str | os.PathLike) -> str | None:
        """The eid of the session whose folder ``path_obj`` is (or is inside)."""
        m = alf.SESSION_PATH_RE.search(Path(path_obj).as_posix())
        if m is None:
            return None
        found = self._catalog.find_session(m["subject"], m["date"], int(m["number"]), m["lab"])
        return found[0] if len(found) == 1 else None

    def eid2path(self, eid: Any) -> Path | list[Path] | None:
        """The local session folder of an eid (a list for a list of eids)."""
        if isinstance(eid, (list, tuple)):
            return [self.eid2path(e) for e in eid]
        session = self._catalog.session(self._eid(eid))  # ValueError for a bad id, as in ONE
        return None if session is None else self._source.session_folder(session)

    def _session_record(self, eid: str | None) -> list[int]:
        """The record of a session of the catalog, as a list (empty without an eid or such a session)."""
        session = self._catalog.session(eid) if eid else None
        return [] if session is None else [session.record_id]

    def _folder(self, eid: str) -> Path:
        """The session folder of an eid of the catalog (looked up once per catalog)."""
        folder = self._folders.get(eid)
        if folder is None:
            folder = self.eid2path(eid) or self.cache_dir / "__unknown_session__"
            self._folders[eid] = folder
        return folder

    # -- searching and listing --------------------------------------------------------------

    def search_terms(self, query_type: str | None = None) -> tuple[str, ...]:
        return SEARCH_TERMS

    def search(self, details: bool = False, query_type: str | None = None, **kwargs: Any):
        """Sessions matching every term, newest first: a list of eids (UUID), and details if asked.

        Terms: subject, lab, projects, task_protocol (partial matches, regexes), date_range, number,
        datasets (names all present), dataset_qc_lte. Unique prefixes of term names are accepted.
        """
        started = time.perf_counter()
        terms = {autocomplete(k): v for k, v in kwargs.items()}
        with _gc_paused():
            found = self._catalog.search(
                wildcards=self.wildcards, subject=terms.get("subject"), lab=terms.get("laboratory"),
                projects=terms.get("projects"), task_protocol=terms.get("task_protocol"),
                date_range=terms.get("date_range"), number=terms.get("number"), datasets=terms.get("datasets"),
                dataset_qc_lte=alf.qc_name(terms["dataset_qc_lte"]) if terms.get("dataset_qc_lte") is not None else None,
                ids_only=not details)
            self._record_query("search", {**terms, "details": details}, started, sessions=found.records)
            eids = [uuid.UUID(e) for e in found.ids]
        if not details:
            return eids
        records = [Bunch(r) for r in session_frame(found.rows).reset_index(drop=True).to_dict("records")]
        return eids, records

    def list_subjects(self) -> list[str]:
        """The subjects of the client's sessions, sorted."""
        return sorted(self._catalog.sessions()["subject"].dropna().unique().tolist())

    def _list(self, eid: Any, filename=None, collection=None, revision=None, qc="FAIL", ignore_qc_not_set=False,
              default_revisions_only=False, *, table: bool = False) -> tuple[str | None, list, pd.DataFrame | None]:
        """``(eid, rows, frame)``: the dataset rows of a session (or all) passing the filters, ordered by
        rel_path; with ``table`` also as a DataFrame (else None)."""
        eid = self._eid(eid) if eid is not None and eid != "" else None
        rows = self._catalog.dataset_rows(eid, qc=qc, ignore_qc_not_set=ignore_qc_not_set)
        pattern = alf.rel_path_regex(filename, collection, revision, wildcards=self.wildcards, match_revision=True)
        keep = [(bool(r.default_revision) or not default_revisions_only) and pattern.match(r.rel_path) is not None
                for r in rows]
        kept = [r for r, k in zip(rows, keep) if k]
        if not table:
            return eid, kept, None
        frame = pd.DataFrame([tuple(r) for r in rows], columns=DATASET_COLUMNS)
        return eid, kept, frame[keep] if len(frame) else frame

    def list_datasets(self, eid: Any = None, filename=None, collection=None, revision=None, qc="FAIL",
                      ignore_qc_not_set: bool = False, details: bool = False, query_type: str | None = None,
                      default_revisions_only: bool = False, keep_eid_index: bool = False):
        """The datasets of a session (or of every session): sorted rel_paths, or a table with ``details``."""
        started = time.perf_counter()
        with _gc_paused():
            eid, rows, frame = self._list(eid, filename, collection, revision, qc, ignore_qc_not_set,
                                          default_revisions_only, table=details)
            self._record_query("list_datasets", {"eid": eid, "filename": filename, "collection": collection,
                                                 "revision": revision, "qc": qc, "details": details},
                               started, sessions=self._session_record(eid), datasets=rows)
        if details:
            return dataset_frame(frame, keep_eid=keep_eid_index or eid is None)
        paths = [r.rel_path for r in rows]
        return sorted(paths) if eid else list(dict.fromkeys(paths))

    def list_collections(self, eid: Any = None, filename=None, collection=None, revision=None,
                         details: bool = False, query_type: str | None = None):
        """The collections of a session's datasets (a dict of tables with ``details``)."""
        return self._list_by("collection", eid, filename, collection, revision, details)

    def list_revisions(self, eid: Any = None, filename=None, collection=None, revision=None,
                       details: bool = False, query_type: str | None = None):
        """The revisions of a session's datasets ('' for unrevised; a dict of tables with ``details``)."""
        return self._list_by("revision", eid, filename, collection, revision, details)

    def _list_by(self, column: str, eid: Any, filename, collection, revision, details: bool):
        """``list_collections``/``list_revisions``: the distinct values of ``column``, recorded."""
        started = time.perf_counter()
        with _gc_paused():
            eid, rows, frame = self._list(eid, filename, collection, revision, table=details)
            self._record_query(f"list_{column}s", {"eid": eid, "filename": filename, "collection": collection,
                                                   "revision": revision}, started,
                               sessions=self._session_record(eid), datasets=rows)
        if details:
            return {value: dataset_frame(group, keep_eid=False) for value, group in frame.groupby(column)}
        return list(dict.fromkeys(getattr(r, column) for r in rows))

    def get_details(self, eid: Any, full: bool = False):
        """A session's record (a Series); with ``full``, its datasets joined with it."""
        eid = self._eid(eid)
        rows = self._catalog.sessions(ids=[eid])
        if rows.empty:
            raise ALFObjectNotFound(eid)
        record = session_frame(rows).iloc[0]
        if not full:
            return record
        table = dataset_frame(self._catalog.datasets(eid, qc="CRITICAL"), keep_eid=True).reset_index()
        for key, value in record.items():
            table[key] = value
        return table.set_index(["eid", "id"])

    # -- loading ----------------------------------------------------------------------------

    def _requested_revision(self, revision: str | None) -> str | None:
        return revision if revision is not None else settings.revision_cutoff()

    def _select(self, eid: str, filename: Any, collection: Any, revision: str | None, *,
                unique: bool, strict: bool = True) -> list:
        """Rows of ``eid`` matching the name filters, then the revision ONE would load (SQL).

        Rows are plain result rows (attribute access), not DataFrames: this is every load's hot path.
        """
        pattern = alf.rel_path_regex(filename, collection, wildcards=self.wildcards)

        def one_collection(rows: list) -> None:
            collections = {r.collection for r in rows}
            if unique and len(collections) > 1:
                raise ALFMultipleCollectionsFound(", ".join(f'"{c}"' for c in sorted(collections)))

        return self._catalog.pick(eid, lambda r: pattern.match(r.rel_path) is not None, revision, strict=strict,
                                  check=one_collection)

    def _fetch(self, method: str, rows: list, *, check_hash: bool, download_only: bool,
               requested_revision: str | None) -> list[Path | None]:
        """Ask the source for each chosen file, record one event per dataset (one transaction),
        return the paths (None for a file that cannot be loaded)."""
        fetched = self._source.fetch(rows, self._folder, check_hash=check_hash)
        events = []
        for row, got in zip(rows, fetched):
            outcome = ("download_only" if download_only else "loaded") if got.ok else got.status
            events.append(self._event(method, outcome, row, requested_revision=requested_revision, path=got.path))
            if got.status.endswith("mismatch"):
                warnings.warn(f"{got.status.replace('_', ' ')} on dataset {row.rel_path} ({got.path}): not loaded",
                              ALFWarning, stacklevel=3)
        if events:
            self._recorder.record_events(events)
        return [got.path if got.ok else None for got in fetched]

    def _refuse(self, method: str, outcome: str, eid: str | None, request: str, revision: str | None,
                error: ALFError) -> None:
        """Record a request that matched nothing loadable, then raise ``error``."""
        self._recorder.record_events([self._event(method, outcome, session_id=eid, rel_path=request,
                                                  requested_revision=revision, detail=str(error))])
        raise error

    def load_dataset(self, eid: Any, dataset: str, collection: str | None = None, revision: str | None = None,
                     query_type: str | None = None, download_only: bool = False, check_hash: bool = True) -> Any:
        """Load one dataset of a session: its content, or its path with ``download_only``."""
        eid = self._eid(eid)
        name = dataset
        if self.wildcards and isinstance(name, str) and len(name.split(".")) == 2:
            name += ".*"
        unique = "/" not in name
        if not unique and (collection is not None or revision is not None):
            raise ValueError("collection and revision kwargs must be None when dataset is a relative path")
        revision = self._requested_revision(revision) if unique else None  # a rel_path names one file
        try:
            rows = self._select(eid, name, collection, revision, unique=unique)
        except ALFError as err:
            self._refuse("load_dataset", "ambiguous", eid, dataset, revision, err)
        if len(rows) == 0:
            self._refuse("load_dataset", "not_found", eid, dataset, revision,
                         ALFObjectNotFound(f'Dataset "{dataset}" not found'))
        if len(rows) > 1:
            self._refuse("load_dataset", "ambiguous", eid, dataset, revision,
                         ALFMultipleObjectsFound(", ".join(f'"{r.rel_path}"' for r in rows)))
        (path,) = self._fetch("load_dataset", rows, check_hash=check_hash, download_only=download_only,
                              requested_revision=revision)
        if path is None:
            raise ALFObjectNotFound(f"Dataset not found: {rows[0].rel_path} is missing or altered on disk")
        return path if download_only else files.read_file(path)

    def load_object(self, eid: Any, obj: str, collection: str | None = None, revision: str | None = None,
                    query_type: str | None = None, download_only: bool = False, check_hash: bool = True,
                    **kwargs: Any):
        """Load every attribute of an ALF object: a Bunch, or the list of paths with ``download_only``."""
        eid = self._eid(eid)
        revision = self._requested_revision(revision)
        rows = self._select(eid, {"object": obj, **kwargs}, collection, revision, unique=False, strict=False)
        if len(rows) == 0:
            self._refuse("load_object", "not_found", eid, obj, revision, ALFObjectNotFound(obj))
        objects = {alf.name_parts(r.name)["object"] or "" for r in rows}
        if len(objects) > 1:
            self._refuse("load_object", "ambiguous", eid, obj, revision, ALFMultipleObjectsFound(*sorted(objects)))
        collections = {r.collection for r in rows}
        if len(collections) > 1:
            self._refuse("load_object", "ambiguous", eid, obj, revision, ALFMultipleCollectionsFound(*sorted(collections)))
        paths = self._fetch("load_object", rows, check_hash=check_hash, download_only=download_only,
                            requested_revision=revision)
        present = [p for p in paths if p is not None]
        if not present:
            raise ALFObjectNotFound(f'ALF object "{obj}" not found on disk')
        return present if download_only else load_object(present)

    def load_datasets(self, eid: Any, datasets: list, collections: Any = None, revisions: Any = None,
                      query_type: str | None = None, assert_present: bool = True, download_only: bool = False,
                      check_hash: bool = True) -> tuple[list | None, list | None]:
        """Load several datasets of a session: ``(contents or paths, records)``, None for the absent ones."""
        if isinstance(datasets, str):
            raise TypeError("`datasets` must be a non-string iterable")
        eid = self._eid(eid)
        if isinstance(datasets, pd.DataFrame):
            datasets = datasets["rel_path"].tolist()
        datasets = list(datasets)
        if not datasets:
            return None, []
        rel_paths = any("/" in str(d) for d in datasets if isinstance(d, str))
        if rel_paths and (collections is not None or revisions is not None):
            raise ValueError("collection and revision kwargs must be None when dataset is a relative path")
        n = len(datasets)
        collections = collections if isinstance(collections, (list, tuple)) else [collections] * n
        revisions = revisions if isinstance(revisions, (list, tuple)) else [revisions] * n
        if len(collections) != n or len(revisions) != n:
            raise ValueError("Collection and revision specifiers must match number of datasets")
        chosen, missing = [], []
        for spec, coll, rev in zip(datasets, collections, revisions):
            name = spec
            if self.wildcards and isinstance(name, str) and len(name.split(".")) == 2:
                name += ".*"
            rev = rev if rel_paths else self._requested_revision(rev)
            rows = self._select(eid, name, coll, rev, unique=True)
            if len(rows) > 1:
                raise ALFMultipleObjectsFound(", ".join(f'"{r.rel_path}"' for r in rows))
            chosen.append(rows)
            if len(rows) == 0:
                missing.append(self._event("load_datasets", "not_found", session_id=eid, rel_path=str(spec),
                                           requested_revision=rev))
        if missing:
            self._recorder.record_events(missing)
            message = "The following datasets are not in the cache: " + ", ".join(e["rel_path"] for e in missing)
            if assert_present:
                raise ALFObjectNotFound(message)
            warnings.warn(message, ALFWarning, stacklevel=2)
        found = [row for rows in chosen for row in rows]
        paths = iter(self._fetch("load_datasets", found, check_hash=check_hash, download_only=download_only,
                                 requested_revision=None))
        frame = pd.DataFrame([tuple(r) for r in found], columns=list(found[0]._fields)) if found else None
        records = iter(dataset_frame(frame, keep_eid=True).reset_index()
                       .assign(revision=frame["revision"].to_numpy())  # ONE's records carry the revision
                       .to_dict("records", into=Bunch) if found else [])
        out_paths, out_records = [], []
        for rows in chosen:
            if len(rows):
                out_paths.append(next(paths))
                out_records.append(next(records))
            else:
                out_paths.append(None)
                out_records.append(None)
        absent = [r["rel_path"] for p, r in zip(out_paths, out_records) if r is not None and p is None]
        if absent:
            message = "The following datasets were not downloaded: " + ", ".join(absent)
            if assert_present:
                raise ALFObjectNotFound(message)
            warnings.warn(message, ALFWarning, stacklevel=2)
        if download_only:
            return out_paths, out_records
        return [files.read_file(p) if p is not None else None for p in out_paths], out_records

    def load_collection(self, eid: Any, collection: str, object: str | None = None, revision: str | None = None,
                        query_type: str | None = None, download_only: bool = False, check_hash: bool = True,
                        **kwargs: Any):
        """Load every object of a collection: a Bunch of object Bunches, or paths with ``download_only``.

        Unlike one-api 3.6.1, ``revision`` selects a revision (ONE passes it as the collection filter).
        """
        eid = self._eid(eid)
        revision = self._requested_revision(revision)
        rows = self._select(eid, {"object": object, **kwargs}, collection, revision, unique=False, strict=False)
        if len(rows) == 0:
            known = len(self._list(eid, collection=collection)[1]) > 0  # ONE: ALFError for an absent collection
            self._refuse("load_collection", "not_found", eid, f"{collection}/{object or '*'}", revision,
                         ALFObjectNotFound(object or collection) if known
                         else ALFError(f"{collection} not found for session {eid}"))
        paths = self._fetch("load_collection", rows, check_hash=check_hash, download_only=download_only,
                            requested_revision=revision)
        present = [(p, r.name) for p, r in zip(paths, rows) if p is not None]
        if not present:
            raise ALFObjectNotFound(f'ALF collection "{collection}" not found on disk')
        if download_only:
            return [p for p, _ in present]
        by_object: dict[str, list[Path]] = {}
        for path, name in present:
            by_object.setdefault(alf.name_parts(name)["object"] or "", []).append(path)
        return Bunch({obj: load_object(ps) for obj, ps in by_object.items()})

    def load_dataset_from_id(self, dset_id: Any, download_only: bool = False, details: bool = False,
                             check_hash: bool = True) -> Any:
        """Load a dataset by its UUID (any QC); with ``details`` also return its record."""
        did = alf.check_uuid(dset_id, "dataset id")
        rows = self._catalog.dataset(did)
        if len(rows) == 0:
            self._refuse("load_dataset_from_id", "not_found", None, did, None, ALFObjectNotFound("Dataset not found"))
        (path,) = self._fetch("load_dataset_from_id", list(rows.itertuples(index=False)), check_hash=check_hash, download_only=download_only,
                              requested_revision=None)
        if path is None:
            raise ALFObjectNotFound("Dataset not found")
        output = path if download_only else files.read_file(path)
        if details:
            return output, dataset_frame(rows, keep_eid=True).iloc[0]
        return output


One = ONE


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector (reference counting still frees everything) while a
    search or list fetches and records its rows: tens of thousands of short-lived, acyclic row
    objects otherwise trigger full collections of the caller's whole heap (50 ms, or 250 ms with
    one-api's tables loaded, for one 50,000-session search)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
