"""Records: every state a session or dataset row was seen in, and the queries that returned them.

Before, ``sessions`` and ``datasets`` held one current row per UUID, overwritten by each import,
and ``dataset_history`` the states a dataset had been seen in. That could not hold a UUID repeated
under two paths (real Alyx exports have them), and a client sharing the database with another
cache answered with the other cache's latest state. Now:

- ``session_records`` and ``dataset_records`` hold every state a row was seen in, never changed
  (a dataset *row* is a UUID in a session at a ``rel_path``); ``query_sessions`` and
  ``query_datasets`` link a query to the records it returned, so a client answers from its own
  tables' records; ``access_events.record_id`` (was ``state_id``) names the record a load used.
- ``sessions`` and ``datasets`` become views of each row's current state (its latest record of a
  complete query), with their former columns (``state_id`` is now ``record_id``); ``dataset_history``
  is gone (its rows are the dataset records, with the same ids).
- ``queries.completed_at``: an import commits its rows in many short transactions and answers only
  once complete. Existing queries are complete.
- ``runs`` gains its context (script, git state, working folder, arguments, ONE settings) and the
  database role that started it. A run that is no longer running never changes, and on PostgreSQL
  only the role that started a run adds events and queries to it (``retired`` marks excepted).

Existing data moves over: each history row becomes the dataset record with its id (the identity
columns from the dataset's row), each session a record, and each link the link to that record.
Rows no query ever returned are credited to a query named ``migrate_0008``. Downgrading rebuilds
the old tables from the records (each UUID's latest record of its latest path: a UUID repeated
under two paths keeps one).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

UUID = sa.String(36)
RUN_CONTEXT = [("script_path", sa.Text()), ("script_sha256", sa.String(64)), ("git_commit", sa.String(64)),
               ("git_dirty", sa.Boolean()), ("git_remote", sa.Text()), ("cwd", sa.Text()), ("argv", sa.Text()),
               ("settings", sa.Text()), ("db_role", sa.String(200))]
RECORDS = ["session_records", "dataset_records"]
LINKS = {"query_sessions": "session_records", "query_datasets": "dataset_records"}
#: The views of this schema, in creation order (each may use the ones before).
VIEWS = {
    "sessions": """
        SELECT r.uuid AS id, r.lab, r.subject, r.date, r.number, r.task_protocol, r.projects,
               r.id AS record_id, r.first_seen_at
        FROM session_records r
        WHERE r.id = (SELECT max(n.id) FROM session_records n JOIN queries q ON q.id = n.query_id
                      WHERE n.uuid = r.uuid AND q.completed_at IS NOT NULL)
    """,
    "datasets": """
        SELECT r.uuid AS id, r.session_uuid AS session_id, r.rel_path, r.collection, r.revision, r.name,
               r.file_size, r.hash, r."exists", r.qc, r.default_revision, r.id AS record_id, r.first_seen_at
        FROM dataset_records r
        WHERE r.id = (SELECT max(n.id) FROM dataset_records n JOIN queries q ON q.id = n.query_id
                      WHERE n.uuid = r.uuid AND n.session_uuid = r.session_uuid AND n.rel_path = r.rel_path
                        AND q.completed_at IS NOT NULL)
    """,
    # One row per load attempt, with the record it was answered from.
    "access_log": """
        SELECT e.id AS event_id, e.event_time, p.name AS project, e.run_id, e.method, e.outcome,
               e.dataset_id AS dataset_uuid, COALESCE(d.session_uuid, e.session_id) AS session_uuid,
               COALESCE(e.rel_path, d.rel_path) AS rel_path, d.collection, d.revision,
               e.requested_revision
        FROM access_events e
        JOIN runs r ON r.id = e.run_id
        JOIN projects p ON p.id = r.project_id
        LEFT JOIN dataset_records d ON d.id = e.record_id
    """,
    # One row per dataset successfully loaded in a run.
    "loaded_datasets": """
        SELECT p.name AS project, e.run_id, e.dataset_id AS dataset_uuid,
               MIN(COALESCE(d.session_uuid, e.session_id)) AS session_uuid,
               MIN(COALESCE(d.rel_path, e.rel_path)) AS rel_path, MIN(d.revision) AS revision,
               MIN(e.event_time) AS first_loaded_at
        FROM access_events e
        JOIN runs r ON r.id = e.run_id
        JOIN projects p ON p.id = r.project_id
        LEFT JOIN dataset_records d ON d.id = e.record_id
        WHERE e.outcome IN ('loaded', 'download_only') AND e.dataset_id IS NOT NULL
        GROUP BY p.name, e.run_id, e.dataset_id
    """,
    "loaded_sessions": """
        SELECT DISTINCT project, run_id, session_uuid FROM loaded_datasets
    """,
}
#: The views of schema 0007 (migration 0001), which this one replaces.
OLD_VIEWS = ["access_log", "loaded_datasets", "loaded_sessions"]

# -- triggers -----------------------------------------------------------------------------------

SQLITE_QUERIES_UPDATE = """
    CREATE TRIGGER oneprov_queries_update BEFORE UPDATE ON queries
    WHEN NEW.id IS NOT OLD.id OR NEW.run_id IS NOT OLD.run_id OR NEW.method IS NOT OLD.method
      OR NEW.params IS NOT OLD.params OR NEW.source IS NOT OLD.source OR NEW.checksum IS NOT OLD.checksum
      OR NEW.mode IS NOT OLD.mode OR NEW.revision_cutoff IS NOT OLD.revision_cutoff
      OR NEW.scope IS NOT OLD.scope OR NEW.started_at IS NOT OLD.started_at
      OR (OLD.n_sessions IS NOT NULL AND NEW.n_sessions IS NOT OLD.n_sessions)
      OR (OLD.n_datasets IS NOT NULL AND NEW.n_datasets IS NOT OLD.n_datasets)
      OR (OLD.duration_s IS NOT NULL AND NEW.duration_s IS NOT OLD.duration_s)
      OR (OLD.error IS NOT NULL AND NEW.error IS NOT OLD.error)
      OR (OLD.completed_at IS NOT NULL AND NEW.completed_at IS NOT OLD.completed_at)
    BEGIN
        SELECT RAISE(ABORT, 'oneprov: queries is append-only (only n_sessions, n_datasets, duration_s, error and completed_at can be filled in, once)');
    END"""
SQLITE_RUNS_UPDATE = """
    CREATE TRIGGER oneprov_runs_update BEFORE UPDATE ON runs
    WHEN OLD.status IS NOT 'running'
      OR NEW.id IS NOT OLD.id OR NEW.project_id IS NOT OLD.project_id OR NEW.label IS NOT OLD.label
      OR NEW.started_at IS NOT OLD.started_at OR NEW.user_name IS NOT OLD.user_name OR NEW.host IS NOT OLD.host
      OR NEW.pid IS NOT OLD.pid OR NEW.command IS NOT OLD.command OR NEW.versions IS NOT OLD.versions
      OR NEW.cache_dir IS NOT OLD.cache_dir OR NEW.base_url IS NOT OLD.base_url
      OR NEW.revision_cutoff IS NOT OLD.revision_cutoff OR NEW.script_path IS NOT OLD.script_path
      OR NEW.script_sha256 IS NOT OLD.script_sha256 OR NEW.git_commit IS NOT OLD.git_commit
      OR NEW.git_dirty IS NOT OLD.git_dirty OR NEW.git_remote IS NOT OLD.git_remote OR NEW.cwd IS NOT OLD.cwd
      OR NEW.argv IS NOT OLD.argv OR NEW.settings IS NOT OLD.settings OR NEW.db_role IS NOT OLD.db_role
    BEGIN
        SELECT RAISE(ABORT, 'oneprov: runs are final once finished (only a running run''s status, finished_at and error change)');
    END"""

PG_QUERIES_UPDATE = """CREATE OR REPLACE FUNCTION oneprov_queries_update() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF (NEW.id, NEW.run_id, NEW.method, NEW.params, NEW.source, NEW.checksum, NEW.mode,
            NEW.revision_cutoff, NEW.scope, NEW.started_at)
           IS DISTINCT FROM
           (OLD.id, OLD.run_id, OLD.method, OLD.params, OLD.source, OLD.checksum, OLD.mode,
            OLD.revision_cutoff, OLD.scope, OLD.started_at)
           OR (OLD.n_sessions IS NOT NULL AND NEW.n_sessions IS DISTINCT FROM OLD.n_sessions)
           OR (OLD.n_datasets IS NOT NULL AND NEW.n_datasets IS DISTINCT FROM OLD.n_datasets)
           OR (OLD.duration_s IS NOT NULL AND NEW.duration_s IS DISTINCT FROM OLD.duration_s)
           OR (OLD.error IS NOT NULL AND NEW.error IS DISTINCT FROM OLD.error)
           OR (OLD.completed_at IS NOT NULL AND NEW.completed_at IS DISTINCT FROM OLD.completed_at)
        THEN
            RAISE EXCEPTION 'oneprov: queries is append-only (only n_sessions, n_datasets, duration_s, error and completed_at can be filled in, once)'
                USING ERRCODE = 'restrict_violation';
        END IF;
        RETURN NEW;
    END $$"""
PG_QUERIES_UPDATE_0003 = PG_QUERIES_UPDATE.replace(
    "\n           OR (OLD.completed_at IS NOT NULL AND NEW.completed_at IS DISTINCT FROM OLD.completed_at)", "").replace(
    ", error and completed_at", " and error")
PG_RUNS_UPDATE = """CREATE FUNCTION oneprov_runs_update() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF OLD.status <> 'running'
           OR (NEW.id, NEW.project_id, NEW.label, NEW.started_at, NEW.user_name, NEW.host, NEW.pid, NEW.command,
               NEW.versions, NEW.cache_dir, NEW.base_url, NEW.revision_cutoff, NEW.script_path, NEW.script_sha256,
               NEW.git_commit, NEW.git_dirty, NEW.git_remote, NEW.cwd, NEW.argv, NEW.settings, NEW.db_role)
              IS DISTINCT FROM
              (OLD.id, OLD.project_id, OLD.label, OLD.started_at, OLD.user_name, OLD.host, OLD.pid, OLD.command,
               OLD.versions, OLD.cache_dir, OLD.base_url, OLD.revision_cutoff, OLD.script_path, OLD.script_sha256,
               OLD.git_commit, OLD.git_dirty, OLD.git_remote, OLD.cwd, OLD.argv, OLD.settings, OLD.db_role)
        THEN
            RAISE EXCEPTION 'oneprov: runs are final once finished (only a running run''s status, finished_at and error change)'
                USING ERRCODE = 'restrict_violation';
        END IF;
        IF OLD.db_role IS NOT NULL AND OLD.db_role <> current_user THEN
            RAISE EXCEPTION 'oneprov: run % was started by role %; only that role closes it', OLD.id, OLD.db_role
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        RETURN NEW;
    END $$"""
#: PostgreSQL: rows naming a run are added by the role that started it (a retirement by anyone).
PG_RUN_OWNER = """CREATE FUNCTION oneprov_run_owner() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE owner text;
    BEGIN
        IF NEW.run_id IS NULL THEN
            RETURN NEW;
        END IF;
        IF TG_TABLE_NAME = 'run_marks' THEN   -- (nested: other tables have no kind)
            IF NEW.kind = 'retired' THEN
                RETURN NEW;
            END IF;
        END IF;
        SELECT db_role INTO owner FROM runs WHERE id = NEW.run_id;
        IF owner IS NOT NULL AND owner <> current_user THEN
            RAISE EXCEPTION 'oneprov: run % was started by role %; only that role records into it', NEW.run_id, owner
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        RETURN NEW;
    END $$"""
OWNED_BY_RUN = ["access_events", "queries", "run_marks", "exports"]


def _append_only(table: str, key: list[str], pg: bool) -> None:
    if pg:
        op.execute(f"""CREATE TRIGGER oneprov_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON {table}
                       FOR EACH STATEMENT EXECUTE FUNCTION oneprov_append_only()""")
        return
    op.execute(f"""CREATE TRIGGER oneprov_{table}_no_update BEFORE UPDATE ON {table}
                   BEGIN SELECT RAISE(ABORT, 'oneprov: {table} is append-only'); END""")
    op.execute(f"""CREATE TRIGGER oneprov_{table}_no_delete BEFORE DELETE ON {table}
                   BEGIN SELECT RAISE(ABORT, 'oneprov: {table} is append-only'); END""")
    same_key = " AND ".join(f"{column} = NEW.{column}" for column in key)
    op.execute(f"""CREATE TRIGGER oneprov_{table}_no_replace BEFORE INSERT ON {table}
                   WHEN EXISTS (SELECT 1 FROM {table} WHERE {same_key})
                   BEGIN SELECT RAISE(ABORT, 'oneprov: {table} is append-only (a row with this key exists)'); END""")


def _no_delete(table: str, pg: bool) -> None:
    if pg:
        op.execute(f"""CREATE TRIGGER oneprov_no_delete BEFORE DELETE OR TRUNCATE ON {table}
                       FOR EACH STATEMENT EXECUTE FUNCTION oneprov_no_delete()""")
    else:
        op.execute(f"""CREATE TRIGGER oneprov_{table}_no_delete BEFORE DELETE ON {table}
                       BEGIN SELECT RAISE(ABORT, 'oneprov: {table} rows are never deleted'); END""")


def _reset_sequence(table: str, pg: bool) -> None:
    """After rows were inserted with explicit ids, the next id follows the largest (PostgreSQL)."""
    if pg:
        op.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), coalesce(max(id), 1), max(id) IS NOT NULL) "
                   f"FROM {table}")


def _fallback_query(needed_sql: str) -> int | None:
    """The id of a query credited with rows no query returned (made only when ``needed_sql`` finds some)."""
    bind = op.get_bind()
    if not bind.exec_driver_sql(needed_sql).first():
        return None
    bind.execute(sa.text("INSERT INTO queries (method, params, mode, started_at, completed_at, n_sessions, n_datasets) "
                         "VALUES ('migrate_0008', '{}', 'local', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 0, 0)"))
    return bind.exec_driver_sql("SELECT max(id) FROM queries WHERE method = 'migrate_0008'").scalar_one()


# -- upgrade ------------------------------------------------------------------------------------

def _create_records() -> None:
    op.create_table(
        "session_records",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uuid", UUID, nullable=False),
        sa.Column("lab", sa.String(200)),
        sa.Column("subject", sa.String(200)),
        sa.Column("date", sa.Date()),
        sa.Column("number", sa.Integer()),
        sa.Column("task_protocol", sa.Text()),
        sa.Column("projects", sa.Text()),
        sa.Column("query_id", sa.Integer(), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["query_id"], ["queries.id"], name="fk_session_records_query_id_queries"),
        sa.PrimaryKeyConstraint("id", name="pk_session_records"),
    )
    op.create_index("ix_session_records_uuid", "session_records", ["uuid"])
    op.create_index("ix_session_records_subject", "session_records", ["subject"])
    op.create_table(
        "dataset_records",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uuid", UUID, nullable=False),
        sa.Column("session_uuid", UUID, nullable=False),
        sa.Column("rel_path", sa.Text(), nullable=False),
        sa.Column("collection", sa.Text(), nullable=False),
        sa.Column("revision", sa.String(200), nullable=False),
        sa.Column("name", sa.String(400), nullable=False),
        sa.Column("file_size", sa.BigInteger()),
        sa.Column("hash", sa.String(128)),
        sa.Column("exists", sa.Boolean(), nullable=False),
        sa.Column("qc", sa.String(8), nullable=False),
        sa.Column("default_revision", sa.Boolean()),
        sa.Column("query_id", sa.Integer(), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["query_id"], ["queries.id"], name="fk_dataset_records_query_id_queries"),
        sa.PrimaryKeyConstraint("id", name="pk_dataset_records"),
    )
    op.create_index("ix_dataset_records_uuid_session_uuid_rel_path", "dataset_records", ["uuid", "session_uuid", "rel_path"])
    op.create_index("ix_dataset_records_revision_choice", "dataset_records",
                    ["session_uuid", "collection", "name", "revision", "qc", "default_revision"])
    op.create_index("ix_dataset_records_name_session_uuid_exists_qc", "dataset_records",
                    ["name", "session_uuid", "exists", "qc"])


def _create_link(table: str, records: str, pg: bool) -> None:
    op.create_table(
        table,
        sa.Column("query_id", sa.Integer(), nullable=False),
        sa.Column("record_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["query_id"], ["queries.id"], name=f"fk_{table}_query_id_queries"),
        sa.ForeignKeyConstraint(["record_id"], [f"{records}.id"], name=f"fk_{table}_record_id_{records}"),
        sa.PrimaryKeyConstraint("query_id", "record_id", name=f"pk_{table}"),
        sqlite_with_rowid=False,
    )
    _append_only(table, ["query_id", "record_id"], pg)


def upgrade() -> None:
    bind = op.get_bind()
    pg = bind.dialect.name == "postgresql"
    for name in reversed(OLD_VIEWS):
        op.execute(f"DROP VIEW {name}")

    # queries complete; runs' context and owner
    op.add_column("queries", sa.Column("completed_at", sa.DateTime()))
    op.execute("UPDATE queries SET completed_at = started_at")
    for name, type_ in RUN_CONTEXT:
        op.add_column("runs", sa.Column(name, type_))

    # the records, from the current rows and their history
    _create_records()
    fallback = _fallback_query(
        "SELECT 1 FROM sessions s WHERE NOT EXISTS (SELECT 1 FROM query_sessions q WHERE q.session_id = s.id) "
        "UNION ALL SELECT 1 FROM dataset_history WHERE query_id IS NULL "
        "UNION ALL SELECT 1 FROM datasets d WHERE NOT EXISTS (SELECT 1 FROM dataset_history h WHERE h.dataset_id = d.id) "
        "AND NOT EXISTS (SELECT 1 FROM query_datasets q WHERE q.dataset_id = d.id)")
    params = {"fallback": fallback}
    bind.execute(sa.text(
        "INSERT INTO session_records (uuid, lab, subject, date, number, task_protocol, projects, query_id, first_seen_at) "
        "SELECT s.id, s.lab, s.subject, s.date, s.number, s.task_protocol, s.projects, "
        "COALESCE((SELECT min(q.query_id) FROM query_sessions q WHERE q.session_id = s.id), :fallback), s.first_seen_at "
        "FROM sessions s ORDER BY s.id"), params)
    bind.execute(sa.text(
        'INSERT INTO dataset_records (id, uuid, session_uuid, rel_path, collection, revision, name, file_size, hash, '
        '"exists", qc, default_revision, query_id, first_seen_at) '
        'SELECT h.id, d.id, d.session_id, d.rel_path, d.collection, d.revision, d.name, h.file_size, h.hash, h."exists", '
        'h.qc, h.default_revision, COALESCE(h.query_id, :fallback), h.observed_at '
        'FROM dataset_history h JOIN datasets d ON d.id = h.dataset_id ORDER BY h.id'), params)
    bind.execute(sa.text(  # (a dataset without history: never in this schema's own writes)
        'INSERT INTO dataset_records (uuid, session_uuid, rel_path, collection, revision, name, file_size, hash, '
        '"exists", qc, default_revision, query_id, first_seen_at) '
        'SELECT d.id, d.session_id, d.rel_path, d.collection, d.revision, d.name, d.file_size, d.hash, d."exists", d.qc, '
        'd.default_revision, COALESCE((SELECT min(q.query_id) FROM query_datasets q WHERE q.dataset_id = d.id), :fallback), '
        'd.first_seen_at FROM datasets d WHERE NOT EXISTS (SELECT 1 FROM dataset_history h WHERE h.dataset_id = d.id) '
        'ORDER BY d.id'), params)
    _reset_sequence("dataset_records", pg)

    # the links, to records
    op.execute("CREATE TABLE _links_0008 (kind INTEGER NOT NULL, query_id INTEGER NOT NULL, record_id INTEGER NOT NULL)")
    op.execute("INSERT INTO _links_0008 SELECT DISTINCT 0, q.query_id, r.id FROM query_sessions q "
               "JOIN session_records r ON r.uuid = q.session_id")
    op.execute("INSERT INTO _links_0008 SELECT DISTINCT 1, q.query_id, r.id FROM query_datasets q "
               "JOIN dataset_records r ON r.id = COALESCE(q.state_id, "
               "(SELECT max(n.id) FROM dataset_records n WHERE n.uuid = q.dataset_id))")
    for kind, (table, records) in enumerate(LINKS.items()):
        op.drop_table(table)
        _create_link(table, records, pg)
        op.execute(f"INSERT INTO {table} (query_id, record_id) SELECT query_id, record_id FROM _links_0008 "
                   f"WHERE kind = {kind} ORDER BY query_id, record_id")
    op.drop_table("_links_0008")

    # events name the record (the history ids are the record ids)
    op.execute("ALTER TABLE access_events RENAME COLUMN state_id TO record_id")
    for table in ("dataset_history", "datasets", "sessions"):
        op.drop_table(table)

    # triggers: records are append-only; queries and runs have their own update rules
    if pg:
        op.execute(PG_QUERIES_UPDATE)
        op.execute(PG_RUNS_UPDATE)
        op.execute(PG_RUN_OWNER)
        op.execute("CREATE TRIGGER oneprov_runs_update BEFORE UPDATE ON runs FOR EACH ROW EXECUTE FUNCTION oneprov_runs_update()")
        for table in OWNED_BY_RUN:
            op.execute(f"CREATE TRIGGER oneprov_run_owner BEFORE INSERT ON {table} "
                       "FOR EACH ROW EXECUTE FUNCTION oneprov_run_owner()")
    else:
        op.execute("DROP TRIGGER oneprov_queries_update")
        op.execute(SQLITE_QUERIES_UPDATE)
        op.execute(SQLITE_RUNS_UPDATE)
    for table in RECORDS:
        _append_only(table, ["id"], pg)
    for name, sql in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {sql}")


# -- downgrade ----------------------------------------------------------------------------------

def downgrade() -> None:
    bind = op.get_bind()
    pg = bind.dialect.name == "postgresql"
    for name in reversed(list(VIEWS)):
        op.execute(f"DROP VIEW {name}")
    if pg:
        for table in OWNED_BY_RUN:
            op.execute(f"DROP TRIGGER oneprov_run_owner ON {table}")
        op.execute("DROP TRIGGER oneprov_runs_update ON runs")
        op.execute("DROP FUNCTION oneprov_run_owner()")
        op.execute("DROP FUNCTION oneprov_runs_update()")
        op.execute(PG_QUERIES_UPDATE_0003)
    else:
        op.execute("DROP TRIGGER oneprov_runs_update")
        op.execute("DROP TRIGGER oneprov_queries_update")
        op.execute(SQLITE_QUERIES_UPDATE.replace(
            "\n      OR (OLD.completed_at IS NOT NULL AND NEW.completed_at IS NOT OLD.completed_at)", "").replace(
            ", error and completed_at", " and error"))

    # the tables of schema 0007, from the records: each UUID's latest record
    op.create_table(
        "sessions",
        sa.Column("id", UUID, nullable=False),
        sa.Column("lab", sa.String(200)),
        sa.Column("subject", sa.String(200)),
        sa.Column("date", sa.Date()),
        sa.Column("number", sa.Integer()),
        sa.Column("task_protocol", sa.Text()),
        sa.Column("projects", sa.Text()),
        sa.Column("first_seen_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_sessions"),
    )
    op.create_index("ix_sessions_subject", "sessions", ["subject"])
    op.create_table(
        "datasets",
        sa.Column("id", UUID, nullable=False),
        sa.Column("session_id", UUID, nullable=False),
        sa.Column("rel_path", sa.Text(), nullable=False),
        sa.Column("collection", sa.Text(), nullable=False),
        sa.Column("revision", sa.String(200), nullable=False),
        sa.Column("name", sa.String(400), nullable=False),
        sa.Column("file_size", sa.BigInteger()),
        sa.Column("hash", sa.String(128)),
        sa.Column("exists", sa.Boolean(), nullable=False),
        sa.Column("qc", sa.String(8), nullable=False),
        sa.Column("default_revision", sa.Boolean()),
        sa.Column("state_id", sa.Integer()),
        sa.Column("first_seen_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_datasets"),
    )
    op.create_index("ix_datasets_revision_choice", "datasets",
                    ["session_id", "collection", "name", "revision", "qc", "default_revision"])
    op.create_index("ix_datasets_name_session_id_id_exists_qc", "datasets", ["name", "session_id", "id", "exists", "qc"])
    op.create_table(
        "dataset_history",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("dataset_id", UUID, nullable=False),
        sa.Column("query_id", sa.Integer()),
        sa.Column("observed_at", sa.DateTime(), nullable=False),
        sa.Column("qc", sa.String(8), nullable=False),
        sa.Column("default_revision", sa.Boolean()),
        sa.Column("exists", sa.Boolean(), nullable=False),
        sa.Column("hash", sa.String(128)),
        sa.Column("file_size", sa.BigInteger()),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"], name="fk_dataset_history_dataset_id_datasets"),
        sa.ForeignKeyConstraint(["query_id"], ["queries.id"], name="fk_dataset_history_query_id_queries"),
        sa.PrimaryKeyConstraint("id", name="pk_dataset_history"),
    )
    op.create_index("ix_dataset_history_dataset_id", "dataset_history", ["dataset_id"])
    op.execute(
        "INSERT INTO sessions (id, lab, subject, date, number, task_protocol, projects, first_seen_at, updated_at) "
        "SELECT r.uuid, r.lab, r.subject, r.date, r.number, r.task_protocol, r.projects, "
        "(SELECT min(f.first_seen_at) FROM session_records f WHERE f.uuid = r.uuid), r.first_seen_at "
        "FROM session_records r WHERE r.id = (SELECT max(n.id) FROM session_records n WHERE n.uuid = r.uuid)")
    op.execute(
        'INSERT INTO datasets (id, session_id, rel_path, collection, revision, name, file_size, hash, "exists", qc, '
        'default_revision, state_id, first_seen_at, updated_at) '
        'SELECT r.uuid, r.session_uuid, r.rel_path, r.collection, r.revision, r.name, r.file_size, r.hash, r."exists", '
        'r.qc, r.default_revision, r.id, (SELECT min(f.first_seen_at) FROM dataset_records f WHERE f.uuid = r.uuid), '
        'r.first_seen_at FROM dataset_records r WHERE r.id = (SELECT max(n.id) FROM dataset_records n WHERE n.uuid = r.uuid)')
    op.execute(
        'INSERT INTO dataset_history (id, dataset_id, query_id, observed_at, qc, default_revision, "exists", hash, file_size) '
        'SELECT r.id, r.uuid, r.query_id, r.first_seen_at, r.qc, r.default_revision, r."exists", r.hash, r.file_size '
        'FROM dataset_records r ORDER BY r.id')
    _reset_sequence("dataset_history", pg)

    op.execute("CREATE TABLE _links_0007 (kind INTEGER NOT NULL, query_id INTEGER NOT NULL, uuid VARCHAR(36) NOT NULL, "
               "record_id INTEGER)")
    op.execute("INSERT INTO _links_0007 SELECT DISTINCT 0, q.query_id, r.uuid, CAST(NULL AS INTEGER) FROM query_sessions q "
               "JOIN session_records r ON r.id = q.record_id")
    op.execute("INSERT INTO _links_0007 SELECT 1, q.query_id, r.uuid, max(r.id) FROM query_datasets q "
               "JOIN dataset_records r ON r.id = q.record_id GROUP BY q.query_id, r.uuid")
    for table in LINKS:
        op.drop_table(table)
    op.create_table(
        "query_sessions",
        sa.Column("query_id", sa.Integer(), nullable=False),
        sa.Column("session_id", UUID, nullable=False),
        sa.ForeignKeyConstraint(["query_id"], ["queries.id"], name="fk_query_sessions_query_id_queries"),
        sa.PrimaryKeyConstraint("query_id", "session_id", name="pk_query_sessions"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "query_datasets",
        sa.Column("query_id", sa.Integer(), nullable=False),
        sa.Column("dataset_id", UUID, nullable=False),
        sa.Column("state_id", sa.Integer()),
        sa.ForeignKeyConstraint(["query_id"], ["queries.id"], name="fk_query_datasets_query_id_queries"),
        sa.PrimaryKeyConstraint("query_id", "dataset_id", name="pk_query_datasets"),
        sqlite_with_rowid=False,
    )
    op.execute("INSERT INTO query_sessions (query_id, session_id) SELECT query_id, uuid FROM _links_0007 "
               "WHERE kind = 0 ORDER BY query_id, uuid")
    op.execute("INSERT INTO query_datasets (query_id, dataset_id, state_id) SELECT query_id, uuid, record_id "
               "FROM _links_0007 WHERE kind = 1 ORDER BY query_id, uuid")
    op.drop_table("_links_0007")
    op.execute("ALTER TABLE access_events RENAME COLUMN record_id TO state_id")
    for table in RECORDS:
        op.drop_table(table)

    # the triggers of migrations 0003 and 0004 on the rebuilt tables
    for table in ("dataset_history", "query_sessions", "query_datasets"):
        _append_only(table, {"dataset_history": ["id"], "query_sessions": ["query_id", "session_id"],
                             "query_datasets": ["query_id", "dataset_id"]}[table], pg)
    for table in ("sessions", "datasets"):
        _no_delete(table, pg)
    for name, _ in reversed(RUN_CONTEXT):
        _drop_column("runs", name, pg)
    _drop_column("queries", "completed_at", pg)
    for name, sql in _old_views().items():
        op.execute(f"CREATE VIEW {name} AS {sql}")


def _drop_column(table: str, column: str, pg: bool) -> None:
    if pg:
        op.drop_column(table, column)
    else:  # SQLite 3.35+ drops a column that no index, key or trigger uses
        op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")


def _old_views() -> dict[str, str]:
    """The views of migration 0001, as they were."""
    return {
        "access_log": """
            SELECT e.id AS event_id, e.event_time, p.name AS project, e.run_id, e.method, e.outcome,
                   e.dataset_id AS dataset_uuid, COALESCE(d.session_id, e.session_id) AS session_uuid,
                   COALESCE(e.rel_path, d.rel_path) AS rel_path, d.collection, d.revision,
                   e.requested_revision
            FROM access_events e
            JOIN runs r ON r.id = e.run_id
            JOIN projects p ON p.id = r.project_id
            LEFT JOIN datasets d ON d.id = e.dataset_id
        """,
        "loaded_datasets": """
            SELECT p.name AS project, e.run_id, e.dataset_id AS dataset_uuid,
                   MIN(COALESCE(d.session_id, e.session_id)) AS session_uuid,
                   MIN(COALESCE(d.rel_path, e.rel_path)) AS rel_path, MIN(d.revision) AS revision,
                   MIN(e.event_time) AS first_loaded_at
            FROM access_events e
            JOIN runs r ON r.id = e.run_id
            JOIN projects p ON p.id = r.project_id
            LEFT JOIN datasets d ON d.id = e.dataset_id
            WHERE e.outcome IN ('loaded', 'download_only') AND e.dataset_id IS NOT NULL
            GROUP BY p.name, e.run_id, e.dataset_id
        """,
        "loaded_sessions": """
            SELECT DISTINCT project, run_id, session_uuid FROM loaded_datasets
        """,
    }
