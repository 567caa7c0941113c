"""The provenance schema: every table in one place (SQLAlchemy Core).

This module is the model the migrations must agree with (``tests/test_migrations.py`` checks it).
The schema itself is only ever changed by a new file in ``migrations/versions``; the views are
created there too, and their columns are a public contract listed in :data:`PUBLIC_VIEWS` and
:data:`CURRENT_VIEWS`.

The idea: a dataset or session *record* is one state in which some source (an import of cache
tables, a query) showed a row; records are never changed, a changed row is a new record. A query
holds the records it returned (as spans of record ids), so a client answers from the records of
its own tables, whatever else shares the database, and a load names the record it was answered
from. "Current state" is a view: each row's latest record.

Conventions:

- UUIDs (runs, sessions, datasets) are stored as lowercase canonical text, so that a person can read
  and join them; records and other rows have integer ids.
- Times are UTC, without a time zone.
- Everything is appended to, never changed or deleted, except a run's status while it runs, and the
  totals an import fills in once when it completes.

>>> sorted(metadata.tables)[:3]
['access_events', 'dataset_records', 'exports']
"""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    BigInteger, Boolean, Column, Date, DateTime, Float, ForeignKey, Index, Integer, LargeBinary, MetaData,
    PrimaryKeyConstraint, String, Table, Text,
)
from sqlalchemy import true as sa_true

from ..alf import MAX_CHARS

UUID = String(36)


def utcnow() -> datetime:
    """Now, in UTC, without a time zone (the database's convention)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


metadata = MetaData(naming_convention={
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
})

projects = Table(
    "projects", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("created_at", DateTime, nullable=False),
)

#: One analysis execution. ``status`` is running, finished or failed; a killed process leaves
#: 'running' behind (see ``run_marks`` for later retirement). A finished or failed run never changes.
runs = Table(
    "runs", metadata,
    Column("id", UUID, primary_key=True),
    Column("project_id", Integer, ForeignKey("projects.id"), nullable=False, index=True),
    Column("label", String(200), index=True),
    Column("status", String(16), nullable=False),
    Column("started_at", DateTime, nullable=False),
    Column("finished_at", DateTime),
    Column("user_name", String(200)),
    Column("host", String(200)),
    Column("pid", Integer),
    Column("command", Text),
    Column("versions", Text),          # JSON: python, oneprov, one-api...
    Column("cache_dir", Text),
    Column("base_url", Text),
    Column("revision_cutoff", String(64)),  # ONE_REVISION_LAST_BEFORE when the run started
    Column("error", Text),
    # What the run was, beyond its command (migration 0008): the script and its git state, where it
    # ran, its arguments and the ONE settings in force (JSON), and the database role that started it.
    Column("script_path", Text),
    Column("script_sha256", String(64)),
    Column("git_commit", String(64)),
    Column("git_dirty", Boolean),
    Column("git_remote", Text),
    Column("cwd", Text),
    Column("argv", Text),
    Column("settings", Text),
    Column("db_role", String(200)),
)

#: Every state a session was seen in: one record per session UUID and distinct set of values.
session_records = Table(
    "session_records", metadata,
    Column("id", Integer, primary_key=True),
    Column("uuid", UUID, nullable=False),
    Column("lab", String(MAX_CHARS["lab"])),
    Column("subject", String(MAX_CHARS["subject"])),
    Column("date", Date),
    Column("number", Integer),
    Column("task_protocol", Text),
    Column("projects", Text),          # comma-joined, as in ONE's cache tables
    Column("query_id", Integer, ForeignKey("queries.id"), nullable=False),  # the query that first showed it
    Column("first_seen_at", DateTime, nullable=False),
    Index("ix_session_records_uuid", "uuid"),
    Index("ix_session_records_subject", "subject"),
)

#: Every state a dataset row was seen in. A row is a dataset UUID in a session at a ``rel_path``
#: (real tables repeat a UUID under two paths: two rows); ``collection``, ``revision`` ('' when
#: unrevised) and ``name`` are parsed from ``rel_path``. NULL ``file_size``/``hash``: unknown;
#: NULL ``default_revision``: the tables did not say.
dataset_records = Table(
    "dataset_records", metadata,
    Column("id", Integer, primary_key=True),
    Column("uuid", UUID, nullable=False),
    Column("session_uuid", UUID, nullable=False),
    Column("rel_path", Text, nullable=False),
    Column("collection", Text, nullable=False),
    Column("revision", String(MAX_CHARS["revision"]), nullable=False),
    Column("name", String(MAX_CHARS["name"]), nullable=False),
    Column("file_size", BigInteger),
    Column("hash", String(MAX_CHARS["hash"])),
    Column("exists", Boolean, nullable=False),
    Column("qc", String(8), nullable=False),
    Column("default_revision", Boolean),
    Column("query_id", Integer, ForeignKey("queries.id"), nullable=False),  # the query that first showed it
    Column("first_seen_at", DateTime, nullable=False),
    # a row's records, and a dataset by its UUID
    Index("ix_dataset_records_uuid_session_uuid_rel_path", "uuid", "session_uuid", "rel_path"),
    # everything the revision choice reads (store/revisions.py), and the rows of one session
    Index("ix_dataset_records_revision_choice", "session_uuid", "collection", "name", "revision", "qc",
          "default_revision"),
    # search(datasets=...): one seek per session, answered from the index alone
    Index("ix_dataset_records_name_session_uuid_exists_qc", "name", "session_uuid", "exists", "qc"),
)

revisions = Table(
    "revisions", metadata,
    Column("name", String(200), primary_key=True),
    Column("first_seen_at", DateTime, nullable=False),
)

#: A search, a list or an import of cache tables. An import's ``source`` is its tables folder and
#: ``checksum`` the digest of its files; its rows are linked like any query result. A query is
#: complete (``completed_at``) once all its rows are recorded: an import commits its rows in many
#: short transactions, and only a complete query answers anything.
queries = Table(
    "queries", metadata,
    Column("id", Integer, primary_key=True),
    Column("run_id", UUID, ForeignKey("runs.id"), index=True),
    Column("method", String(64), nullable=False),
    Column("params", Text),            # JSON
    Column("source", Text),
    Column("checksum", String(64)),
    Column("mode", String(16)),
    Column("revision_cutoff", String(64)),
    Column("scope", String(200)),
    Column("started_at", DateTime, nullable=False),
    Column("duration_s", Float),
    Column("n_sessions", Integer),
    Column("n_datasets", Integer),
    Column("error", Text),
    Column("completed_at", DateTime),
    Index("ix_queries_source_checksum", "source", "checksum"),
)

#: The records a query returned, as spans of record ids: the records ``first_id`` to ``last_id``,
#: each of which is a record (a span never covers an id that is not). A query's spans never overlap.
#: A whole table imported is one span or a few, not a row per record (migration 0009).
query_session_spans = Table(
    "query_session_spans", metadata,
    Column("query_id", Integer, ForeignKey("queries.id"), nullable=False),
    Column("first_id", Integer, nullable=False),
    Column("last_id", Integer, nullable=False),
    PrimaryKeyConstraint("query_id", "first_id"),
    sqlite_with_rowid=False,  # stored by its key alone
)

#: The dataset records a query returned, as spans of record ids (see ``query_session_spans``).
query_dataset_spans = Table(
    "query_dataset_spans", metadata,
    Column("query_id", Integer, ForeignKey("queries.id"), nullable=False),
    Column("first_id", Integer, nullable=False),
    Column("last_id", Integer, nullable=False),
    PrimaryKeyConstraint("query_id", "first_id"),
    sqlite_with_rowid=False,
)

#: A digest of every row an import recorded, by record: what a later import of the same tables
#: compares its rows with, so that it finds the rows that changed without reading the records
#: (migration 0009; ``store/digests.py``). ``record_ids`` and ``digests`` are packed little-endian
#: arrays (an int64 a record; three uint64 a record: the digest's two words and the identity's
#: hash), written in parts; ``scheme`` names how the digests were computed.
query_digests = Table(
    "query_digests", metadata,
    Column("query_id", Integer, ForeignKey("queries.id"), nullable=False),
    Column("records", String(32), nullable=False),   # 'session_records' or 'dataset_records'
    Column("part", Integer, nullable=False),
    Column("scheme", String(32), nullable=False),
    Column("record_ids", LargeBinary, nullable=False),
    Column("digests", LargeBinary, nullable=False),
    PrimaryKeyConstraint("query_id", "records", "part"),
)

#: The records a query returned, a row each: views over the spans, for audit queries (``SELECT
#: record_id FROM query_datasets WHERE query_id = 3``). Code that tests whether one record is held
#: uses the spans (``store/records.py``), one index seek per record.
views = MetaData()
query_sessions = Table("query_sessions", views, Column("query_id", Integer), Column("record_id", Integer))
query_datasets = Table("query_datasets", views, Column("query_id", Integer), Column("record_id", Integer))

#: Every load attempt, successful or not. ``outcome`` is 'loaded' or 'download_only' for a success
#: and names the failure otherwise (see :data:`SUCCESS_OUTCOMES`); ``record_id`` is the dataset
#: record the load was answered from (NULL when the request matched none).
access_events = Table(
    "access_events", metadata,
    Column("id", Integer, primary_key=True),
    Column("run_id", UUID, ForeignKey("runs.id"), nullable=False),
    Column("event_time", DateTime, nullable=False),
    Column("method", String(64), nullable=False),
    Column("outcome", String(32), nullable=False),
    Column("dataset_id", UUID, index=True),
    Column("session_id", UUID),
    Column("rel_path", Text),
    Column("requested_revision", String(200)),
    Column("revision_cutoff", String(64)),
    Column("scope", String(200)),
    Column("record_id", Integer),
    Column("path", Text),
    Column("bytes", BigInteger),
    Column("detail", Text),
    # counts in the run's loaded-ids list: ONE's record_loaded was on (migration 0002)
    Column("listed", Boolean, nullable=False, server_default=sa_true()),
    # a run's loaded ids, read from the index alone, in dataset order (migration 0007)
    Index("ix_access_events_run_id_dataset_id_outcome_listed_event_time",
          "run_id", "dataset_id", "outcome", "listed", "event_time"),
)

#: Things that happen to a run besides loads: a cleared loaded-ids list, a retirement.
run_marks = Table(
    "run_marks", metadata,
    Column("id", Integer, primary_key=True),
    Column("run_id", UUID, ForeignKey("runs.id"), nullable=False, index=True),
    Column("marked_at", DateTime, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("scope", String(200)),
    Column("detail", Text),
)

#: Every file written from the store.
exports = Table(
    "exports", metadata,
    Column("id", Integer, primary_key=True),
    Column("run_id", UUID, ForeignKey("runs.id")),
    Column("kind", String(32), nullable=False),
    Column("path", Text, nullable=False),
    Column("rows", BigInteger, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("params", Text),            # JSON
    Column("created_at", DateTime, nullable=False),
)

#: Access-event outcomes that count as a successful load.
SUCCESS_OUTCOMES = ("loaded", "download_only")

#: The auditors' views and their columns, in order: a public contract.
PUBLIC_VIEWS: dict[str, list[str]] = {
    "access_log": ["event_id", "event_time", "project", "run_id", "method", "outcome", "dataset_uuid",
                   "session_uuid", "rel_path", "collection", "revision", "requested_revision"],
    "loaded_datasets": ["project", "run_id", "dataset_uuid", "session_uuid", "rel_path", "revision",
                        "first_loaded_at"],
    "loaded_sessions": ["project", "run_id", "session_uuid"],
}

#: The current state of each session and dataset row (its latest record of a complete query), as
#: views with the columns the tables of schema 0007 had, for audit queries such as
#: ``... JOIN datasets d ON d.id = l.dataset_uuid WHERE d.qc = 'CRITICAL'``.
CURRENT_VIEWS: dict[str, list[str]] = {
    "sessions": ["id", "lab", "subject", "date", "number", "task_protocol", "projects", "record_id",
                 "first_seen_at"],
    "datasets": ["id", "session_id", "rel_path", "collection", "revision", "name", "file_size", "hash", "exists",
                 "qc", "default_revision", "record_id", "first_seen_at"],
}

#: The records each query returned, one row each (views over the spans, migration 0009): the link
#: tables of schema 0008, with their columns.
LINK_VIEWS: dict[str, list[str]] = {
    "query_sessions": ["query_id", "record_id"],
    "query_datasets": ["query_id", "record_id"],
}


#: One line on each public view and table (``oneprov schema`` prints them; the README's table is
#: checked against them): what one row is.
DESCRIPTIONS: dict[str, str] = {
    "access_log": "a load attempt; outcome loaded or download_only for a success, else why not (missing, "
                  "size_mismatch, hash_mismatch, not_found, ambiguous, failed, refused, download_failed)",
    "loaded_datasets": "a dataset successfully loaded in a run",
    "loaded_sessions": "a session with a loaded dataset, per run",
    "sessions": "a session row's current state: its latest record among complete queries",
    "datasets": "a dataset row's current state: its latest record among complete queries",
    "projects": "a project, by name",
    "runs": "a run: who, where, which script and commit, settings, versions, status, error",
    "session_records": "a state a session row was seen in",
    "dataset_records": "a state a dataset row (a UUID in a session at a path) was seen in",
    "revisions": "a revision name, when first seen",
    "queries": "a search, list, import, REST answer or merge of tables, with its parameters and source",
    "query_sessions": "a session record a query returned",
    "query_datasets": "a dataset record a query returned",
    "query_session_spans": "the session records a query returned, as a span of record ids",
    "query_dataset_spans": "the dataset records a query returned, as a span of record ids",
    "query_digests": "a part of the digests of the rows an import recorded (what the next import compares with)",
    "access_events": "a load or download attempt, with the record it loaded and its outcome",
    "run_marks": "a mark on a run: a cleared list, a retirement, the tables it worked from",
    "exports": "a file written from the store, with its rows, bytes, sha256 and run",
}


#: What each column of the public views holds (a column's meaning is the same in every view).
COLUMN_DESCRIPTIONS: dict[str, str] = {
    "event_id": "the access event's id", "event_time": "when the attempt was recorded (UTC)",
    "project": "the run's project", "run_id": "the run (UUID)", "method": "the ONE method (load_dataset, ...)",
    "outcome": "loaded, download_only, or why the attempt failed", "dataset_uuid": "the dataset's UUID",
    "session_uuid": "the session's UUID (eid)", "rel_path": "the path in the session folder",
    "collection": "the ALF collection ('' for none)", "revision": "the revision ('' when unrevised)",
    "requested_revision": "the revision asked for, or the cutoff in force",
    "first_loaded_at": "the run's first successful load of it (UTC)",
    "id": "the row's UUID", "session_id": "the session's UUID (eid)", "lab": "the lab",
    "subject": "the subject's nickname", "date": "the session's date", "number": "the session's number that day",
    "task_protocol": "the task protocol", "projects": "the session's projects, comma-separated",
    "record_id": "the record (state) shown", "first_seen_at": "when this state was first recorded (UTC)",
    "name": "the file name", "file_size": "bytes (NULL: unknown)", "hash": "md5 (NULL: unknown)",
    "exists": "whether the file exists, as the tables say", "qc": "the QC level",
    "default_revision": "whether this is the default revision (NULL: the tables did not say)",
}


#: What the columns of the tables hold, where a name alone does not say it (or says another thing
#: than in the views); every other column is described by :data:`COLUMN_DESCRIPTIONS`.
TABLE_COLUMN_DESCRIPTIONS: dict[str, dict[str, str]] = {
    "projects": {"id": "the project's id", "name": "the project's name", "created_at": "when it was created (UTC)"},
    "revisions": {"name": "the revision name"},
    "runs": {
        "id": "the run's id (UUID)", "project_id": "the run's project (projects.id)", "label": "the run's label",
        "status": "running, finished or failed", "started_at": "when it started (UTC)",
        "finished_at": "when it ended (UTC; NULL while running)", "user_name": "the user who ran it",
        "host": "the machine it ran on", "pid": "its process id", "command": "its command line (secrets hidden)",
        "versions": "JSON: the versions of Python, oneprov, one-api and the libraries it imported",
        "cache_dir": "the ONE cache folder", "base_url": "the Alyx URL in remote mode",
        "revision_cutoff": "ONE_REVISION_LAST_BEFORE when it started", "error": "why it failed",
        "script_path": "the script it ran", "script_sha256": "the script's sha256",
        "git_commit": "the commit of the script's repository", "git_dirty": "uncommitted changes in that repository",
        "git_remote": "that repository's origin URL (credentials removed)", "cwd": "the working directory",
        "argv": "JSON: its arguments (secrets hidden)", "settings": "JSON: the non-secret ONE_* settings in force",
        "db_role": "the database role that started it"},
    "session_records": {"id": "the record's id", "uuid": "the session's UUID (eid)",
                        "query_id": "the query that first showed this state"},
    "dataset_records": {"id": "the record's id", "uuid": "the dataset's UUID",
                        "query_id": "the query that first showed this state"},
    "queries": {
        "id": "the query's id", "run_id": "the run that made it (NULL: an import outside a run)",
        "method": "search, list_datasets, import_cache, a REST call ...", "params": "JSON: its parameters",
        "source": "where the rows came from: a tables folder, an Alyx URL", "checksum": "the digest of what was read",
        "mode": "local or remote", "revision_cutoff": "ONE_REVISION_LAST_BEFORE in force",
        "scope": "the run's scope at the time", "started_at": "when it started (UTC)",
        "duration_s": "how long it took (s)", "n_sessions": "session rows returned", "n_datasets": "dataset rows returned",
        "error": "why it failed (it then answers nothing)", "completed_at": "when all its rows were recorded (UTC)"},
    "query_sessions": {"query_id": "the query", "record_id": "a session record it returned"},
    "query_datasets": {"query_id": "the query", "record_id": "a dataset record it returned"},
    "query_session_spans": {"query_id": "the query", "first_id": "the first session record of the span",
                            "last_id": "the last session record of the span (every id between is one)"},
    "query_dataset_spans": {"query_id": "the query", "first_id": "the first dataset record of the span",
                            "last_id": "the last dataset record of the span (every id between is one)"},
    "query_digests": {"query_id": "the import", "records": "session_records or dataset_records",
                      "part": "the part's number", "scheme": "how the digests were computed",
                      "record_ids": "the records (little-endian 64-bit integers)",
                      "digests": "each record's digest (two 64-bit words) and identity hash (one), in the same order"},
    "access_events": {
        "id": "the event's id", "dataset_id": "the dataset's UUID (NULL: the request matched none)",
        "revision_cutoff": "ONE_REVISION_LAST_BEFORE in force", "scope": "the run's scope at the time",
        "record_id": "the dataset record it was answered from", "path": "the local file",
        "bytes": "the file's size", "detail": "what went wrong, in words",
        "listed": "counts in the run's loaded-ids list (ONE's record_loaded was on)"},
    "run_marks": {"id": "the mark's id", "marked_at": "when (UTC)",
                  "kind": "clear_list (the loaded-ids list cleared), retired, tables (the tables worked from)",
                  "scope": "the run's scope at the time", "detail": "what it says"},
    "exports": {"id": "the export's id", "run_id": "the run it belongs to", "kind": "what was written (loaded_dataset_ids, datasets_table ...)",
                "path": "where", "rows": "rows written", "bytes": "its size", "sha256": "its sha256",
                "params": "JSON: how it was selected", "created_at": "when (UTC)"},
}


#: Which row a column's value names, where the database does not say it with a foreign key (the
#: views have none): view or table -> column -> (the table or view it names, its column there).
#: ``oneprov serve`` turns these values into links.
LINKS: dict[str, dict[str, tuple[str, str]]] = {
    "access_log": {"event_id": ("access_events", "id"), "project": ("projects", "name"), "run_id": ("runs", "id"),
                   "dataset_uuid": ("datasets", "id"), "session_uuid": ("sessions", "id")},
    "loaded_datasets": {"project": ("projects", "name"), "run_id": ("runs", "id"), "dataset_uuid": ("datasets", "id"),
                        "session_uuid": ("sessions", "id")},
    "loaded_sessions": {"project": ("projects", "name"), "run_id": ("runs", "id"), "session_uuid": ("sessions", "id")},
    "sessions": {"record_id": ("session_records", "id")},
    "datasets": {"session_id": ("sessions", "id"), "record_id": ("dataset_records", "id")},
    "access_events": {"dataset_id": ("datasets", "id"), "session_id": ("sessions", "id"),
                      "record_id": ("dataset_records", "id")},
    "session_records": {"uuid": ("sessions", "id")},
    "dataset_records": {"uuid": ("datasets", "id"), "session_uuid": ("sessions", "id")},
}


def column_description(table: str, column: str) -> str:
    """What ``column`` of the public view or table ``table`` holds."""
    return TABLE_COLUMN_DESCRIPTIONS.get(table, {}).get(column) or COLUMN_DESCRIPTIONS[column]


def public_schema() -> list[dict[str, object]]:
    """The public views, then the tables: ``name``, ``kind``, ``columns``, ``description``."""
    out: list[dict[str, object]] = []
    for views in (PUBLIC_VIEWS, CURRENT_VIEWS, LINK_VIEWS):
        out += [{"name": n, "kind": "view", "columns": list(c), "description": DESCRIPTIONS[n]} for n, c in views.items()]
    out += [{"name": t.name, "kind": "table", "columns": [c.name for c in t.columns], "description": DESCRIPTIONS[t.name]}
            for t in metadata.sorted_tables]
    return out
