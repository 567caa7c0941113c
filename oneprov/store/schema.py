"""The provenance schema: every table in one place (SQLAlchemy Core).

This module is the model the migrations must agree with (``tests/test_migrations.py`` checks it).
The schema itself is only ever changed by a new file in ``migrations/versions``; the auditors' views
(``access_log``, ``loaded_datasets``, ``loaded_sessions``) are created there too, and their columns
are a public contract listed in :data:`PUBLIC_VIEWS`.

Conventions:

- UUIDs (runs, sessions, datasets) are stored as lowercase canonical text, so that a person can read
  and join them; other ids are integers.
- Times are UTC, without a time zone.
- Current-state rows (``sessions``, ``datasets``, a run's status) are updated in place. History
  (``dataset_history``, ``queries`` and their result rows, ``access_events``, ``run_marks``,
  ``exports``) is only ever appended to.

>>> sorted(metadata.tables)[:3]
['access_events', 'dataset_history', 'datasets']
"""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    BigInteger, Boolean, Column, Date, DateTime, Float, ForeignKey, Index, Integer, MetaData,
    PrimaryKeyConstraint, String, Table, Text,
)
from sqlalchemy import true as sa_true

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
#: 'running' behind (see ``run_marks`` for later retirement).
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
)

sessions = Table(
    "sessions", metadata,
    Column("id", UUID, primary_key=True),
    Column("lab", String(200)),
    Column("subject", String(200), index=True),
    Column("date", Date),
    Column("number", Integer),
    Column("task_protocol", Text),
    Column("projects", Text),          # comma-joined, as in ONE's cache tables
    Column("first_seen_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
)

#: Current state of each dataset record. ``collection``, ``revision`` ('' when unrevised) and
#: ``name`` are parsed from ``rel_path``; ``state_id`` points at the latest ``dataset_history`` row.
datasets = Table(
    "datasets", metadata,
    Column("id", UUID, primary_key=True),
    Column("session_id", UUID, nullable=False),
    Column("rel_path", Text, nullable=False),
    Column("collection", Text, nullable=False),
    Column("revision", String(200), nullable=False),
    Column("name", String(400), nullable=False),
    Column("file_size", BigInteger),   # NULL: unknown
    Column("hash", String(128)),       # NULL: unknown
    Column("exists", Boolean, nullable=False),
    Column("qc", String(8), nullable=False),
    Column("default_revision", Boolean),  # NULL: the tables did not say
    Column("state_id", Integer),
    Column("first_seen_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    # Everything the revision choice reads (oneprov.revisions), and the lookups by session (migration 0006).
    Index("ix_datasets_revision_choice", "session_id", "collection", "name", "revision", "qc", "default_revision"),
    # search(datasets=...): one seek per session, answered from the index alone (migration 0005)
    Index("ix_datasets_name_session_id_id_exists_qc", "name", "session_id", "id", "exists", "qc"),
)

revisions = Table(
    "revisions", metadata,
    Column("name", String(200), primary_key=True),
    Column("first_seen_at", DateTime, nullable=False),
)

#: Every state a dataset was observed in (the first one and each change of a mutable field).
dataset_history = Table(
    "dataset_history", metadata,
    Column("id", Integer, primary_key=True),
    Column("dataset_id", UUID, ForeignKey("datasets.id"), nullable=False, index=True),
    Column("query_id", Integer, ForeignKey("queries.id")),
    Column("observed_at", DateTime, nullable=False),
    Column("qc", String(8), nullable=False),
    Column("default_revision", Boolean),
    Column("exists", Boolean, nullable=False),
    Column("hash", String(128)),
    Column("file_size", BigInteger),
)

#: A search, a list or an import of cache tables. An import's ``source`` is its tables folder and
#: ``checksum`` the digest of its files; its rows are linked like any query result.
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
    Index("ix_queries_source_checksum", "source", "checksum"),
)

query_sessions = Table(
    "query_sessions", metadata,
    Column("query_id", Integer, ForeignKey("queries.id"), nullable=False),
    Column("session_id", UUID, nullable=False),
    PrimaryKeyConstraint("query_id", "session_id"),
    sqlite_with_rowid=False,  # stored by its key alone (migration 0004)
)

#: The datasets a query returned, with the history row that was current when it ran.
query_datasets = Table(
    "query_datasets", metadata,
    Column("query_id", Integer, ForeignKey("queries.id"), nullable=False),
    Column("dataset_id", UUID, nullable=False),
    Column("state_id", Integer),
    PrimaryKeyConstraint("query_id", "dataset_id"),
    sqlite_with_rowid=False,
)

#: Every load attempt, successful or not. ``outcome`` is 'loaded' or 'download_only' for a success
#: and names the failure otherwise (see :data:`SUCCESS_OUTCOMES`).
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
    Column("state_id", Integer),
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
