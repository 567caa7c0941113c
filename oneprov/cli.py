"""The ``oneprov`` command: a thin layer over the library.

Every command takes ``--db PATH_OR_URL`` (default ``$ONEPROV_DB``). Errors print one line and exit
with status 1; they never print a traceback.
"""
from __future__ import annotations

import datetime
import functools
import json
import re
import sys
import warnings
from pathlib import Path

import click
import pandas as pd

from . import settings
from .export import one_files
from .errors import BadInputError, OneprovError
from .store import migrate, open_store, roles
from .store.engine import create_engine
from .store.sql import read_only_query

DB_HELP = (f"Database: a SQLite file path or a SQLAlchemy URL (postgresql+psycopg://...). "
           f"Default: ${settings.DB_ENV}.")


def db_option(func):
    return click.option("--db", envvar=settings.DB_ENV, metavar="PATH_OR_URL", help=DB_HELP)(func)


#: What Ctrl-C (exit status 130) says, per command: what it leaves behind.
INTERRUPTED = {"import_cache": "interrupted: nothing imported (the database is as it was)",
               "export_cache": "interrupted: the tables in the folder are as they were"}


def friendly_errors(func):
    """Turn oneprov's errors (and OS errors such as a full disk) into one line and exit status 1, and
    Ctrl-C into one line and exit status 130."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (OneprovError, OSError) as exc:
            raise click.ClickException(str(exc)) from None
        except MemoryError:
            raise click.ClickException("out of memory: the result is too large for this machine; select fewer "
                                       "rows (LIMIT) or columns") from None
        except KeyboardInterrupt:
            click.echo(INTERRUPTED.get(func.__name__, "interrupted"), err=True)
            sys.exit(130)
    return wrapper


#: Every command's output formats: a table for a person, CSV, a JSON array, one JSON object a line.
FORMATS = ["table", "csv", "json", "ndjson"]


def format_option(func):
    return click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
                        help="table, csv, json (an array of objects) or ndjson (one object a line); times in "
                             "ISO 8601 UTC with 'Z'; NULL is empty (csv), null (json) or NULL (table).")(func)


def object_format_option(shape: str):
    """``--format`` of a command that prints one object (its keys: ``shape``)."""
    return click.option("--format", "fmt", type=click.Choice(["table", "json", "ndjson"]), default="table",
                        show_default=True, help=f"table for a person; json (ndjson: on one line): one object: {shape}.")


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="oneprov")
def main() -> None:
    """oneprov: a durable record of which ONE datasets, and which revision of each, an analysis used.

    \b
    Quick start (no network needed):
      oneprov demo                      make a small ALF repository, record an analysis, audit it
      oneprov import-cache DIR --db prov.sqlite
      oneprov sql "SELECT * FROM loaded_datasets" --db prov.sqlite
    """
    warnings.formatwarning = _one_line_warning   # a warning is one line for a person, not a source line


# -- db ---------------------------------------------------------------------------------------

@main.group()
def db() -> None:
    """Create, upgrade and check the database schema."""


@db.command("upgrade")
@db_option
@friendly_errors
def db_upgrade(db: str | None) -> None:
    """Create the schema, or upgrade it to this oneprov's version."""
    engine = create_engine(db)
    try:
        status = migrate.upgrade(engine)
    finally:
        engine.dispose()
    # (only the process that migrated says so: in a first-start race the others found it done)
    click.echo(f"schema {status.migrated_from} -> {status.current}" if status.migrated_from
               else f"schema already at {status.current}")


@db.command("current")
@db_option
@friendly_errors
def db_current(db: str | None) -> None:
    """Print the database's schema version and this oneprov's."""
    engine = create_engine(db, readonly=True)
    try:
        status = migrate.schema_status(engine)
    finally:
        engine.dispose()
    click.echo(f"database: {status.current or 'empty'}\noneprov:  {status.head}")


@db.command("check")
@db_option
@friendly_errors
def db_check(db: str | None) -> None:
    """Check the schema version and the database's integrity; exit 1 on any problem."""
    problems = migrate.check(db)
    for line in problems:
        click.echo(f"problem: {line}", err=True)
    if problems:
        sys.exit(1)
    click.echo("ok")


@db.command("grant")
@click.option("--role", required=True, help="An existing PostgreSQL role (creating roles is the administrator's job).")
@click.option("--kind", type=click.Choice(["client", "auditor"]), required=True,
              help="client: read, record, import (no DDL, no change to the history); auditor: read only.")
@click.option("--dry-run", is_flag=True, help="Print the SQL statements without running them.")
@db_option
@friendly_errors
def db_grant(role: str, kind: str, dry_run: bool, db: str | None) -> None:
    """Give an existing PostgreSQL ROLE exactly the privileges of a client or an auditor.

    Run it as the owner of the tables (the role that ran `oneprov db upgrade`), and again after an
    upgrade. It replaces the role's privileges on oneprov's tables. PostgreSQL only.
    """
    result = roles.grant(db, role, kind, dry_run=dry_run)
    if dry_run:
        click.echo("\n".join(result.statements))
        return
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"role {role!r} has the privileges of a oneprov {kind} on {result.where} "
               f"({len(result.statements)} statements)")


# -- import, runs -----------------------------------------------------------------------------

@main.command("import-cache")
@click.argument("tables_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Import even if the same tables were imported before.")
@db_option
@friendly_errors
def import_cache(tables_dir: Path, force: bool, db: str | None) -> None:
    """Import ONE cache tables (sessions.pqt, datasets.pqt) from TABLES_DIR as a recorded query."""
    with open_store(db) as store:
        result = store.import_cache(tables_dir, force=force, progress=sys.stderr.isatty())
    if result.unchanged_tables:
        click.echo(f"unchanged: these tables were imported before (query {result.query_id}); nothing written")
    else:
        click.echo(f"imported {result.sessions} sessions and {result.datasets} datasets "
                   f"({result.changed} new or changed) as query {result.query_id}")


@main.command("runs")
@click.option("--project", help="Only this project's runs.")
@click.option("--since", help="Only runs started at or after this date or time (ISO 8601, UTC).")
@click.option("--status", type=click.Choice(["running", "finished", "failed", "interrupted"]), help="Only runs in this state.")
@click.option("--label", help="Only runs with this label.")
@format_option
@db_option
@friendly_errors
def runs_cmd(project: str | None, since: str | None, status: str | None, label: str | None, fmt: str,
             db: str | None) -> None:
    """List the recorded runs, newest first, with their script, commit and counts of loads and queries."""
    with open_store(db, create=False, upgrade=False) as store:
        frame = store.runs(project)
    if since:
        frame = frame[frame["started_at"] >= pd.Timestamp(_since(since))]
    if status:
        frame = frame[frame["status"] == status]
    if label:
        frame = frame[frame["label"] == label]
    _print_frame(frame, fmt)


def _since(text: str) -> datetime.datetime:
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", ""))
    except ValueError:
        raise OneprovError(f"--since {text!r}: expected a date or time like 2026-12-01 or 2026-12-01T10:00") from None


@main.command("show")
@click.argument("run")
@object_format_option("run, tables, queries, outcomes, exports, marks")
@db_option
@friendly_errors
def show_cmd(run: str, fmt: str, db: str | None) -> None:
    """Everything RUN (an id, a unique prefix, a label or 'last') recorded about itself: its script,
    git state, settings and versions, the tables it worked from, its loads per scope and outcome,
    and the files it exported."""
    from .audit import show

    with open_store(db, create=False, upgrade=False) as store:
        shown = show(store, store.resolve_run(run))
    if fmt != "table":
        _print_object(shown, fmt)
        return
    info = shown["run"]
    for key in ("id", "project", "label", "status", "started_at", "finished_at", "user_name", "host", "pid",
                "script_path", "script_sha256", "git_commit", "git_dirty", "git_remote", "cwd", "argv", "command",
                "cache_dir", "base_url", "revision_cutoff", "versions", "settings", "db_role", "error"):
        value = info.get(key)
        click.echo(f"{key:>16}: {'NULL' if value is None else _iso(value) if not isinstance(value, (dict, list)) else json.dumps(value)}")
    click.echo(f"{'queries':>16}: {shown['queries']}")
    for title, rows in (("tables", shown["tables"]), ("loads", shown["outcomes"]), ("exports", shown["exports"]),
                        ("marks", shown["marks"])):
        click.echo(f"\n{title}:")
        _print_frame(pd.DataFrame(rows), "table") if rows else click.echo("(none)")


@main.command("schema")
@click.argument("name", required=False)
@format_option
@friendly_errors
def schema_cmd(name: str | None, fmt: str) -> None:
    """The public views and the tables, with their columns and what one row of each is; with NAME
    (a view or table), each of its columns and what it holds.

    \b
    Examples:
      oneprov schema
      oneprov schema loaded_datasets --format csv
    """
    from .store.schema import column_description, public_schema

    rows = public_schema()
    if name is not None:
        entry = next((r for r in rows if r["name"] == name), None)
        if entry is None:
            raise BadInputError(f"no public view or table {name!r}; they are: {', '.join(r['name'] for r in rows)}")
        rows = [{"column": c, "description": column_description(name, c)} for c in entry["columns"]]
        if fmt in ("json", "ndjson"):
            _print_records(rows, fmt)
        else:
            _print_frame(pd.DataFrame(rows), fmt)
        return
    if fmt in ("json", "ndjson"):
        _print_records(rows, fmt)
        return
    _print_frame(pd.DataFrame([{**r, "columns": ", ".join(r["columns"])} for r in rows]), fmt)


@main.command("diff")
@click.argument("run_a")
@click.argument("run_b")
@format_option
@db_option
@friendly_errors
def diff_cmd(run_a: str, run_b: str, fmt: str, db: str | None) -> None:
    """What changed between RUN_A and RUN_B, dataset by dataset, and why: loaded by one only, another
    revision (the cutoff, the default flag, QC, the tables), another hash, size or QC, another id;
    and searches with the same parameters that returned other sessions."""
    from .audit import diff

    with open_store(db, create=False, upgrade=False) as store:
        found = diff(store, store.resolve_run(run_a), store.resolve_run(run_b))
    _print_frame(found, fmt)


@main.command("cutoff")
@click.argument("run")
@object_format_option("run_id, reproducible, from, before, proposed, loads, unexplained, default_not_last")
@db_option
@friendly_errors
def cutoff_cmd(run: str, fmt: str, db: str | None) -> None:
    """The ONE_REVISION_LAST_BEFORE dates that reproduce every revision RUN loaded; when no date
    does, the cutoff that reproduces most loads and the loads it does not; and the loads whose
    default revision a later revision would replace under any cutoff."""
    from .audit import cutoff

    with open_store(db, create=False, upgrade=False) as store:
        found = cutoff(store, store.resolve_run(run))
    if fmt != "table":
        _print_object(found, fmt)
        return
    if found["reproducible"]:
        span = f"from {found['from'] or 'any date'}" + (f", before {found['before']}" if found["before"] else "")
        click.echo(f"every revision of the {found['loads']} load(s) is reproduced by ONE_REVISION_LAST_BEFORE {span}"
                   + (f"; e.g. {found['proposed']}" if found["proposed"] else " (or none)"))
    else:
        click.echo(f"no single date reproduces every load; ONE_REVISION_LAST_BEFORE={found['proposed']} reproduces "
                   f"{found['loads'] - len(found['unexplained'])} of {found['loads']}; not these:")
        _print_frame(pd.DataFrame(found["unexplained"]), "table")
    if found["default_not_last"]:
        click.echo("loads of a default revision that a cutoff would replace by a later one:")
        _print_frame(pd.DataFrame(found["default_not_last"]), "table")


@main.command("stale")
@click.option("--project", help="Only this project's runs.")
@click.option("--run", help="Only this run (an id, a unique prefix, a label or 'last').")
@click.option("--since", help="Only runs started at or after this date or time (ISO 8601, UTC).")
@click.option("--include-retired", is_flag=True, help="Also judge retired runs.")
@click.option("--fail-on-stale", is_flag=True, help="Exit with status 3 when anything is stale (for a paper's CI).")
@format_option
@db_option
@friendly_errors
def stale_cmd(project, run, since, include_retired, fail_on_stale, fmt, db) -> None:
    """Every (run, dataset) whose state in the latest tables of its source differs from what the run
    loaded, with the reason: removed, no longer exists, now CRITICAL or FAIL, no longer the default
    revision, another revision now chosen (by the run's own cutoff), hash or size changed."""
    from .audit import stale

    with open_store(db, create=False, upgrade=False) as store:
        run_id = store.resolve_run(run, project) if run else None
        found = stale(store, project=project, run=run_id, since=_since(since) if since else None,
                      include_retired=include_retired)
    _print_frame(found, fmt)
    if fail_on_stale and len(found):
        click.echo(f"{len(found)} stale load(s) in {found['run_id'].nunique()} run(s)", err=True)
        sys.exit(3)


@main.command("retire")
@click.argument("run")
@click.option("--reason", required=True, help="Why the run is retired (recorded with it).")
@db_option
@friendly_errors
def retire_cmd(run: str, reason: str, db: str | None) -> None:
    """Retire RUN (an id, a unique prefix, a label or 'last'): adds a record, deletes nothing."""
    with open_store(db, create=False) as store:
        run_id = store.resolve_run(run)
        store.retire_run(run_id, reason)
    click.echo(f"retired run {run_id}")


# -- exports ----------------------------------------------------------------------------------

@main.group()
def export() -> None:
    """Write ONE's files (loaded-ids CSV, cache tables) from the database."""


@export.command("loaded-ids")
@click.option("--run", help="A run id (or unique prefix), a run label, or 'last'.")
@click.option("--project", help="Only loads of this project's runs.")
@click.option("--label", help="Only loads of runs with this label.")
@click.option("--scope", help="Only loads made inside this named scope (e.g. figure3).")
@click.option("--sessions", "sessions_only", is_flag=True, help="Write session UUIDs instead of dataset UUIDs.")
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="File or folder to write. Default: ONE's time-stamped name in the current folder.")
@db_option
@friendly_errors
def export_loaded_ids(run, project, label, scope, sessions_only, output, db) -> None:
    """Write the UUIDs of successfully loaded datasets in ONE's CSV format.

    Without filters: every load in the database.
    """
    with open_store(db, create=False) as store:
        run_id = store.resolve_run(run, project) if run else None
        directory, path = (output, None) if output is None or output.is_dir() else (None, output)
        ids, written = one_files.export_loaded_ids(store, directory or Path.cwd(), path=path, run=run_id,
                                                   project=project, label=label, scope=scope,
                                                   sessions_only=sessions_only)
    if written is None:
        raise OneprovError("nothing was loaded that matches; no file written")
    click.echo(f"wrote {len(ids)} {'session' if sessions_only else 'dataset'} UUIDs to {written}")


@export.command("cache")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--run", help="Export only what this run queried or loaded, as it saw it (id, prefix, label or 'last').")
@click.option("--clobber", is_flag=True, help="Overwrite tables in OUT_DIR instead of merging with them.")
@db_option
@friendly_errors
def export_cache(out_dir: Path, run: str | None, clobber: bool, db: str | None) -> None:
    """Write ONE-format sessions.pqt and datasets.pqt into OUT_DIR (created if needed)."""
    with open_store(db, create=False) as store:
        run_id = store.resolve_run(run) if run else None
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = one_files.export_cache(store, out_dir, run=run_id, clobber=clobber)
    for path in paths.values():
        click.echo(f"wrote {path}")


def _selection_options(func):
    for option in reversed([
            click.option("--run", help="One run (an id, a unique prefix, a label or 'last')."),
            click.option("--scope", help="The loads made inside this named scope (e.g. figure3), in every run."),
            click.option("--label", help="Every run with this label (e.g. one paper)."),
            click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
                         help="The file (prov) or folder (rocrate) to write.")]):
        func = option(func)
    return func


@export.command("prov")
@_selection_options
@db_option
@friendly_errors
def export_prov_cmd(run, scope, label, output, db) -> None:
    """Write W3C PROV-JSON of a run, a scope or a label: runs as activities, people and hosts as
    agents, scripts as plans, datasets as seen as entities, loads as 'used', exports as generated."""
    from .export.prov_json import export_prov

    with open_store(db, create=False, upgrade=False) as store:
        run_id = store.resolve_run(run) if run else None
        path = export_prov(store, output, run=run_id, scope=scope, label=label)
    click.echo(f"wrote {path}")


@export.command("rocrate")
@_selection_options
@db_option
@friendly_errors
def export_rocrate_cmd(run, scope, label, output, db) -> None:
    """Write an RO-Crate 1.1 (Process Run Crate) folder of a run, a scope or a label: each run a
    CreateAction over the datasets it loaded, with ONE's loaded-ids CSVs inside the crate."""
    from .export.rocrate import export_rocrate

    with open_store(db, create=False) as store:
        run_id = store.resolve_run(run) if run else None
        path = export_rocrate(store, output, run=run_id, scope=scope, label=label)
    click.echo(f"wrote {path / 'ro-crate-metadata.json'}")


# -- sql --------------------------------------------------------------------------------------

@main.command("sql")
@click.argument("query")
@format_option
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Stop the query if it runs longer than this (default: no limit; Ctrl-C stops it too).")
@db_option
@friendly_errors
def sql_cmd(query: str, fmt: str, timeout: float | None, db: str | None) -> None:
    """Run a read-only SQL QUERY; the database is opened read-only and can never be changed.

    \b
    Public views: access_log, loaded_datasets, loaded_sessions. Example:
      oneprov sql "SELECT run_id, count(*) FROM loaded_datasets GROUP BY run_id"
    Binary values (BLOBs) print as hex: \\x0a1b...
    """
    _print_frame(read_only_query(db, query, timeout=timeout), fmt)


def _printable(value: object) -> object:
    """A cell as text can show it: bytes (a BLOB) as hex, PostgreSQL's way (\\x0a1b...)."""
    if isinstance(value, memoryview):
        value = value.tobytes()
    return "\\x" + value.hex() if isinstance(value, (bytes, bytearray)) else value


def _iso(value: object) -> object:
    """A time as ISO 8601 UTC with 'Z' (the store keeps UTC); anything else as it is."""
    if isinstance(value, (pd.Timestamp, datetime.datetime)) and not pd.isna(value):
        return value.replace(tzinfo=None).isoformat() + "Z"
    return value


def _plain(frame: pd.DataFrame) -> pd.DataFrame:
    """Cells as every format prints them: BLOBs as hex, times as ISO 8601 with 'Z', NULLs as None."""
    changed = {}
    for c in frame.columns:
        column = frame[c]
        if pd.api.types.is_datetime64_any_dtype(column) or column.map(
                lambda v: isinstance(v, (datetime.datetime, pd.Timestamp))).any():
            changed[c] = column.map(lambda v: None if v is None or pd.isna(v) else _iso(v)).astype(object)
        elif column.dtype == object and column.map(lambda v: isinstance(v, (bytes, bytearray, memoryview))).any():
            changed[c] = column.map(_printable)
        elif _stored_times(column):   # (SQLite returns its times as text to raw SQL)
            changed[c] = column.map(lambda v: None if v is None or pd.isna(v) else v.replace(" ", "T") + "Z")
    frame = frame.assign(**changed) if changed else frame
    return frame.astype(object).where(frame.notna(), None)


_STORED_TIME = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?:\.\d+)?$")


def _stored_times(column: pd.Series) -> bool:
    """Whether a column holds times as SQLite stores them ('2026-12-01 21:19:54.784403'), and nothing else."""
    values = column.dropna()
    return len(values) > 0 and values.map(lambda v: isinstance(v, str) and _STORED_TIME.match(v) is not None).all()


def _json_default(value: object) -> str:
    """What JSON cannot hold as it is: times as ISO 8601 with 'Z', anything else as text."""
    value = _iso(value)
    return value if isinstance(value, str) else str(value)


def _print_records(records: list[dict], fmt: str) -> None:
    """Print JSON-ready dicts (a command's documented shape) as json or ndjson."""
    if fmt == "ndjson":
        for record in records:
            click.echo(json.dumps(record, default=_json_default))
    else:
        click.echo(json.dumps(records, indent=1, default=_json_default))


def _print_object(value: dict, fmt: str) -> None:
    """One JSON object (a command's documented shape): indented (json) or on one line (ndjson)."""
    if fmt == "ndjson":
        _print_records([value], "ndjson")
    else:
        click.echo(json.dumps(value, indent=1, default=_json_default))


def _print_frame(frame: pd.DataFrame, fmt: str) -> None:
    frame = _plain(frame)
    if fmt == "csv":
        click.echo(frame.to_csv(index=False), nl=False)
    elif fmt in ("json", "ndjson"):
        _print_records([{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
                        for row in frame.to_dict("records")], fmt)
    elif frame.empty:
        if len(frame.columns):   # (the header, then that there are no rows: both on stdout)
            click.echo(" ".join(frame.columns))
        click.echo("(no rows)" if len(frame.columns) else "")
    else:
        with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 200,
                               "display.max_colwidth", 60):
            click.echo(frame.fillna("NULL").to_string(index=False))


@main.command("report")
@click.option("--project", help="Every run of this project.")
@click.option("--run", help="One run (an id, a unique prefix, a label or 'last').")
@click.option("--label", help="Every run with this label.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The HTML file to write.")
@db_option
@friendly_errors
def report_cmd(project, run, label, output, db) -> None:
    """Write one self-contained HTML report (plots inline, no network needed to view it): the runs,
    loads over time per project, the QC and revision mix each run saw against today's state, the
    datasets per scope and the exports written."""
    from .export.report import write_report

    with open_store(db, create=False, upgrade=False) as store:
        run_id = store.resolve_run(run, project) if run else None
        path = write_report(store, output, project=project, run=run_id, label=label)
    click.echo(f"wrote {path}")


# -- web --------------------------------------------------------------------------------------

@main.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (127.0.0.1: this machine only).")
@click.option("--port", type=click.IntRange(0, 65535), default=8001, show_default=True, help="Port (0: any free one).")
@db_option
@friendly_errors
def serve_cmd(host: str, port: int, db: str | None) -> None:
    """Browse the database in Datasette, read-only: every view and table described, canned queries
    for the audit questions (runs that used data now CRITICAL, revisions used per dataset, loads per
    project per month). SQLite files only; needs `pip install 'oneprov[web]'`."""
    from .store.engine import database_url, sqlite_path
    from .web import serve

    path = sqlite_path(database_url(db or settings.database()))
    if path is None:
        raise OneprovError("oneprov serve shows SQLite files; for PostgreSQL, point Datasette at a SQLite export")
    sys.exit(serve(path, host=host, port=port))


# -- demo -------------------------------------------------------------------------------------

@main.command("demo")
@click.option("--dir", "folder", type=click.Path(file_okay=False, path_type=Path),
              help="Folder to create the demo in (default: a new temporary folder).")
@friendly_errors
def demo_cmd(folder: Path | None) -> None:
    """Run an offline end-to-end example: make an ALF repository, record an analysis, audit it."""
    from .demo import run_demo
    run_demo(folder, echo=click.echo)
