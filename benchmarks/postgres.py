"""Section 'postgres' of benchmarks/run.py: the same work on PostgreSQL, next to SQLite, in one run.

A throwaway PostgreSQL cluster is started as the tests start theirs (tests/pgserver.py: on
127.0.0.1, durability switched off, so commits cost no fsync, as SQLite's ``synchronous=NORMAL``
in WAL mode costs none per commit either). Measured on the workspace's cache:

- the first import, against raw psycopg ``COPY`` of the same rows into one table with a UNIQUE
  text UUID (the PostgreSQL twin of the SQLite section's raw ``executemany``);
- ``search(subject)``, ``list_datasets(eid)`` and a recorded ``load_dataset`` of a client on the
  PostgreSQL store, against one-api (and the SQLite store's figures of this run, when measured);
- 8 processes recording load events (``Store.record_access``, one per transaction, each with the
  record it was answered from, as the client records it) against 8 raw psycopg processes running the
  same INSERT, and the loads lost (none may be).
"""
from __future__ import annotations

import sys
import time
from typing import Any, Callable

import benchlib as bl
from benchlib import LOAD_COLLECTION, LOAD_NAME, measure

#: Issue 16: a first import into PostgreSQL at 100k rows/s or more.
PG_IMPORT_TARGET_ROWS_S = 100_000


def section_postgres(ctx: Any, Row: Any, spawn_children: Callable[..., list[dict]],
                     total_rate: Callable[[list[dict]], float]) -> None:
    """Add the rows of this section to ``ctx`` (run.py's Context), made with ``Row``; writer processes
    are started by ``spawn_children`` and their loads per second summed by ``total_rate`` (run.py's, given
    here so that this module does not import run.py back)."""
    sys.path.insert(0, str(bl.REPO / "tests"))
    import pandas as pd
    import psycopg
    from pgserver import pg_cluster

    from oneprov import ONE, open_store
    from oneprov import tables as ptables

    n_rows = ctx.ws.n_datasets
    with pg_cluster() as pg:
        ctx.log(f"  PostgreSQL: first import of {n_rows:,} datasets rows ...")
        store = open_store(pg.url)
        start = time.perf_counter()
        result = store.import_cache(ctx.cache, progress=False)
        t_import = time.perf_counter() - start
        if result.datasets != n_rows:
            raise RuntimeError(f"unexpected import into PostgreSQL: {result}")

        ctx.log("  raw psycopg COPY of the same rows into one table ...")
        frame = pd.concat(ptables.iter_datasets(ctx.cache / "datasets.pqt"))
        frame = frame.astype(object).where(frame.notna(), None)
        columns = [c if c != "exists" else "exists_" for c in frame.columns]
        rows = list(frame.itertuples(index=False, name=None))
        del frame
        with psycopg.connect(pg.dsn) as con:
            con.execute("CREATE TABLE raw_datasets (id TEXT NOT NULL UNIQUE, eid TEXT NOT NULL, rel_path TEXT NOT NULL, "
                        "collection TEXT, revision TEXT, name TEXT, file_size BIGINT, hash TEXT, exists_ BOOLEAN, "
                        "qc TEXT, default_revision BOOLEAN)")
            start = time.perf_counter()
            with con.cursor() as cur, cur.copy(f"COPY raw_datasets ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            con.commit()
            t_raw = time.perf_counter() - start
            con.execute("DROP TABLE raw_datasets")
            con.commit()
        del rows
        rate = n_rows / t_import
        ctx.add(Row("8 postgres", f"first import into PostgreSQL ({n_rows:,} datasets rows), rows/s",
                    "raw psycopg COPY, one table, UNIQUE text uuid", n_rows / t_raw, rate, "rows/s",
                    f"≥ {PG_IMPORT_TARGET_ROWS_S // 1000}k rows/s", rate >= PG_IMPORT_TARGET_ROWS_S,
                    f"oneprov import {bl.fmt_seconds(t_import)}"))

        ctx.log("  a client on the PostgreSQL store: search, list, load ...")
        from one.api import One
        api = One(ctx.cache, mode="local")      # (its own: the export section fills the shared one's loaded list)
        api.record_loaded = True
        prov = ONE(ctx.cache, mode="local", db=pg.url, project="bench-pg", label=f"bench-pg-{ctx.scale.name}")
        prov.record_loaded = True
        subject, eids = ctx.ws.subject, ctx.ws.load_eids

        def load(client: Any, i: int) -> Any:   # (one-api without its md5: its faster setting)
            kw = {"check_hash": False} if client is api else {}
            return client.load_dataset(eids[i % len(eids)], LOAD_NAME, collection=LOAD_COLLECTION, **kw)

        calls = (
            (f"search(subject='{subject}')", lambda c, i: c.search(subject=subject)),
            ("list_datasets(eid)", lambda c, i: c.list_datasets(eids[i % len(eids)])),
            ("load_dataset per call (recorded, md5 checked once)", load),
        )
        sqlite_rows = {r.operation: r for r in ctx.rows}
        for label, call in calls:
            for i in range(len(eids)):                   # warm-up: the run starts, files are hashed once
                call(prov, i)
                call(api, i)
            counter = iter(range(10 ** 9))
            t_prov = measure(lambda: call(prov, next(counter)), **ctx.repeats(50))
            counter = iter(range(10 ** 9))
            t_api = measure(lambda: call(api, next(counter)), **ctx.repeats(50))
            same_sqlite = next((r for op, r in sqlite_rows.items() if op.startswith(label.split(" per call")[0])), None)
            ctx.add(Row("8 postgres", f"{label}, PostgreSQL store", "one-api" + (" check_hash=False" if "load" in label
                                                                                else ""),
                        t_api.median, t_prov.median, "s", "—", None,
                        f"oneprov {t_prov.describe()}" + (f"; the SQLite store in this run: "
                                                          f"{bl.fmt_seconds(same_sqlite.value)}" if same_sqlite else "")))
        prov.close()
        store.close()

        n, seconds = ctx.scale.conc_procs, ctx.scale.conc_seconds
        ctx.log(f"  {n} processes recording load events into PostgreSQL, and {n} raw psycopg processes ...")
        # Each load's record given, as the client records it, on both sides. (The raw INSERT that
        # finds the record itself, ``max(id) ... WHERE uuid = %s``, is the wrong baseline here:
        # once psycopg prepares it, PostgreSQL's generic plan scans the primary key backwards for
        # the uuid, ~16 ms a call at 100k rows.)
        mine = spawn_children(ctx, "store-given", n, seconds, db=pg.url)
        raw = spawn_children(ctx, "rawpg", n, seconds, db=pg.url)
        rate_s, rate_r = total_rate(mine), total_rate(raw)
        store = open_store(pg.url)
        runs = [r["run_id"] for r in mine]
        counted = store.sql("SELECT count(*) AS n FROM access_events WHERE run_id IN ("
                            + ", ".join(f"'{r}'" for r in runs) + ")")["n"].iloc[0]
        store.close()
        acked = sum(r["acked"] for r in mine)
        ctx.add(Row("8 postgres", f"{n} processes recording loads (Store.record_access, one event per transaction, "
                    f"the record each load was answered from given) into PostgreSQL, {seconds:g} s: loads/s in total",
                    f"raw psycopg, {n} processes, the same INSERT",
                    rate_r, rate_s, "loads/s", "ratio ≤ 1.25 (≥ 0.8x the raw rate)", rate_r <= 1.25 * rate_s,
                    f"{sum(r['n_errors'] for r in mine)} failed calls"))
        ctx.add(Row("8 postgres", "record_access into PostgreSQL: loads acknowledged but not in access_events (lost)",
                    "", None, acked - counted, "count", "0", acked == counted, f"{acked:,} acknowledged"))
        if acked != counted:
            ctx.failures.append(f"postgres: {acked - counted} acknowledged loads are not in the database")
    ctx.note("postgres: a throwaway cluster on 127.0.0.1 (tests/pgserver.py) with fsync, synchronous_commit and "
             "full_page_writes off, as the test suite runs it; a production server's commits cost more.")
