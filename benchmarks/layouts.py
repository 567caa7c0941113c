"""What the dataset records' layout costs: raw sqlite3 bulk loads into today's and candidate layouts.

A design measurement for issue 16's schema change, not a benchmark of oneprov's code: the same
generated rows (:func:`oneprov.synthetic.make_repository`, read and normalised as an import reads
them, untimed) are loaded with plain ``sqlite3`` into four layouts, as a first import writes:
transactions of 100,000 rows (the records, and the query's link rows where the layout has them),
then the three secondary indexes, with the page cache of a first import. Printed: the time of the
rows, of the indexes, in all, the rate, and the file's size.

- A: schema 0008's (``dataset_records`` keyed by text UUIDs, a link row per record).
- A': today's, schema 0009's: A without link rows (a query holds its records as spans of ids).
- B: the session as an integer key instead of its text UUID, link rows.
- C: B without link rows.
- D: C with the dataset UUID as 16 bytes instead of 36 characters of text.

Example (1M rows, about a minute and a half on 2 cores)::

    python benchmarks/layouts.py --sessions 50000
"""
from __future__ import annotations

import argparse
import shutil
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

COLUMNS = ["id", "eid", "rel_path", "collection", "revision", "name", "file_size", "hash", "exists", "qc",
           "default_revision"]


def _layouts(session_ids: dict[str, int]) -> dict[str, dict[str, Any]]:
    text: Callable[[str], Any] = str
    return {
        "A schema 0008 (text session UUID, link rows)": dict(session="session_uuid TEXT", to_session=text,
                                                             uuid="TEXT", to_uuid=text, links=True),
        "A' today's, 0009 (A without link rows)": dict(session="session_uuid TEXT", to_session=text,
                                                       uuid="TEXT", to_uuid=text, links=False),
        "B integer session key, link rows": dict(session="session_id INTEGER", to_session=session_ids.__getitem__,
                                                 uuid="TEXT", to_uuid=text, links=True),
        "C integer session key, no link rows": dict(session="session_id INTEGER", to_session=session_ids.__getitem__,
                                                    uuid="TEXT", to_uuid=text, links=False),
        "D C with 16-byte dataset UUIDs": dict(session="session_id INTEGER", to_session=session_ids.__getitem__,
                                               uuid="BLOB", to_uuid=lambda u: uuid.UUID(u).bytes, links=False),
    }


def load(db: Path, layout: dict[str, Any], batches: list[list[list]], cache_mib: int) -> tuple[float, float, float]:
    """Load ``batches`` (column lists, :data:`COLUMNS` order) into a new ``db``; return the seconds of
    the rows and of the indexes, and the file's MiB."""
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("PRAGMA synchronous = NORMAL")
    con.execute(f"PRAGMA cache_size = -{cache_mib * 1024}")
    key = layout["session"].split()[0]
    con.execute(f"CREATE TABLE records (id INTEGER PRIMARY KEY, uuid {layout['uuid']} NOT NULL, {layout['session']} "
                "NOT NULL, rel_path TEXT NOT NULL, collection TEXT NOT NULL, revision TEXT NOT NULL, name TEXT NOT NULL, "
                "file_size INTEGER, hash TEXT, \"exists\" INTEGER NOT NULL, qc TEXT NOT NULL, default_revision INTEGER, "
                "query_id INTEGER NOT NULL, first_seen_at TEXT NOT NULL)")
    con.execute("CREATE TABLE links (query_id INTEGER NOT NULL, record_id INTEGER NOT NULL, "
                "PRIMARY KEY (query_id, record_id)) WITHOUT ROWID")
    insert = "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, '2026-12-02 00:00:00.000000')"
    prepared, next_id = [], 1
    for columns in batches:   # (values converted before the clock starts)
        ids = range(next_id, next_id + len(columns[0]))
        next_id += len(ids)
        prepared.append((ids, list(zip(ids, map(layout["to_uuid"], columns[0]), map(layout["to_session"], columns[1]),
                                       *columns[2:]))))
    start = time.perf_counter()
    for ids, rows in prepared:
        con.execute("BEGIN IMMEDIATE")
        con.executemany(insert, rows)
        if layout["links"]:
            con.executemany("INSERT INTO links VALUES (1, ?)", ((i,) for i in ids))
        con.execute("COMMIT")
    rows_done = time.perf_counter()
    con.execute("BEGIN IMMEDIATE")
    con.execute(f"CREATE INDEX ix_row ON records (uuid, {key}, rel_path)")
    con.execute(f"CREATE INDEX ix_revision_choice ON records ({key}, collection, name, revision, qc, default_revision)")
    con.execute(f"CREATE INDEX ix_name ON records (name, {key}, \"exists\", qc)")
    con.execute("COMMIT")
    done = time.perf_counter()
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return rows_done - start, done - rows_done, db.stat().st_size / 2 ** 20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=50_000, help="sessions of 20 datasets each (50,000: 1M rows)")
    parser.add_argument("--runs", type=int, default=1, help="times to load each layout, one after the other")
    parser.add_argument("--cache-mib", type=int, default=64, help="the page cache, in MiB (a first import's: 64)")
    args = parser.parse_args(argv)

    from oneprov.synthetic import make_repository
    from oneprov.tables import iter_datasets

    work = Path(tempfile.mkdtemp(prefix="oneprov-layouts-"))
    try:
        make_repository(work / "cache", n_sessions=args.sessions, datasets_per_session=20, write_files=False, seed=0)
        batches = []
        for frame in iter_datasets(work / "cache" / "datasets.pqt", batch_size=100_000):
            frame = frame.sort_values(["eid", "rel_path", "id"])   # (as an import writes them)
            batches.append([frame[c].astype(object).where(frame[c].notna(), None).tolist() for c in COLUMNS])
        session_ids: dict[str, int] = {}
        for columns in batches:
            for eid in columns[1]:
                session_ids.setdefault(eid, len(session_ids) + 1)
        n = sum(len(b[0]) for b in batches)
        print(f"{n:,} dataset rows in {len(session_ids):,} sessions; page cache {args.cache_mib} MiB")
        for _ in range(args.runs):
            for name, layout in _layouts(session_ids).items():
                db = work / "layout.sqlite"
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{db}{suffix}").unlink(missing_ok=True)
                rows_s, index_s, mib = load(db, layout, batches, args.cache_mib)
                total = rows_s + index_s
                print(f"{name:42s} rows {rows_s:5.1f} s  indexes {index_s:5.1f} s  total {total:5.1f} s  "
                      f"({n / total / 1000:,.0f}k rows/s)  {mib:,.0f} MiB", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
