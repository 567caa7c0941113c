#!/usr/bin/env python
"""Profile one benchmarked oneprov operation and print its hotspots.

    python benchmarks/hotspots.py OP [OP ...] [--scale smoke|medium|full] [--workdir DIR]
                                  [--tool pyinstrument|cprofile] [--top 25] [--threshold 0.02] [--sql]

OPs: import, open, load, search_subject, list_datasets, search_datasets, revision_all, revision_one,
save_cache, loaded_ids, record_access. With ``--workdir`` the generated cache and its imported
database are reused between calls (the cache of ``run.py --workdir DIR`` too).

pyinstrument (``pip install pyinstrument``) gives a call tree with nodes under ``--threshold`` of
the time hidden, then a flat list of self time; without it (or with ``--tool cprofile``) cProfile
prints the top functions by cumulative and by own time. ``--sql`` adds the SQL statements that took
the most time (SQLAlchemy cursor events: time in the driver, per statement text).
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import benchlib as bl  # noqa: E402  (puts the checkout on sys.path)
from benchlib import LOAD_COLLECTION, LOAD_NAME, REVISION_CUTOFF

OPS = ["import", "open", "load", "search_subject", "list_datasets", "search_datasets", "revision_all",
       "revision_one", "save_cache", "loaded_ids", "record_access"]


def setup(op: str, ws: bl.Workspace, scale: bl.Scale) -> tuple[Callable[[], Any], int, Callable[[], None]]:
    """``(fn, times, teardown)``: the operation to profile, how often to run it, and what to close."""
    from oneprov import ONE, export, open_store

    if op == "import":
        db = Path(ws.root) / "hotspots_import.sqlite"
        bl.remove_db(db)
        store = open_store(db)
        return (lambda: store.import_cache(ws.cache_dir, progress=False)), 1, \
            lambda: (store.close(), bl.remove_db(db))
    _ensure_db(ws)
    if op == "open":
        return (lambda: ONE(ws.cache_dir, mode="local", db=ws.db).close()), 20, lambda: None
    if op in ("record_access", "loaded_ids"):
        import pyarrow.parquet as pq
        n = min(scale.loaded_ids, ws.n_datasets)
        table = pq.read_table(ws.cache_dir / "datasets.pqt", columns=["id", "eid", "rel_path"]).slice(0, n).to_pydict()
        events = [{"method": "load_dataset", "outcome": "loaded", "dataset_id": d, "session_id": e, "rel_path": r}
                  for d, e, r in zip(table["id"], table["eid"], table["rel_path"])]
        store = open_store(ws.db)
        run = store.start_run(project="hotspots", label=op)

        def record():
            for i in range(0, n, 10_000):
                store.record_access(run, events[i:i + 10_000])
        if op == "record_access":
            return record, 1, store.close
        record()
        out = Path(tempfile.mkdtemp(prefix="hotspots-ids-"))
        return (lambda: export.export_loaded_ids(store, out, run=run)), 3, \
            lambda: (store.close(), shutil.rmtree(out, ignore_errors=True))
    client = ONE(ws.cache_dir, mode="local", db=ws.db, project="hotspots", label=op)
    client.record_loaded = True
    eids = ws.load_eids
    for e in eids:  # warm-up: the run is started, files seen once
        client.load_dataset(e, LOAD_NAME, collection=LOAD_COLLECTION)
    counter = iter(range(10 ** 9))
    if op == "load":
        fn, times = (lambda: client.load_dataset(eids[next(counter) % len(eids)], LOAD_NAME,
                                                 collection=LOAD_COLLECTION)), 50
    elif op == "search_subject":
        fn, times = (lambda: client.search(subject=ws.subject)), 30
    elif op == "list_datasets":
        fn, times = (lambda: client.list_datasets(eids[0])), 30
    elif op == "search_datasets":
        fn, times = (lambda: client.search(datasets=LOAD_NAME)), 1
    elif op == "revision_all":
        fn, times = (lambda: client.store.datasets_last_before(revision=REVISION_CUTOFF)), 1
    elif op == "revision_one":
        fn, times = (lambda: client.store.datasets_last_before(revision=REVISION_CUTOFF, eid=eids[0])), 30
    elif op == "save_cache":
        out = Path(tempfile.mkdtemp(prefix="hotspots-cache-"))
        return (lambda: client.save_cache(out, clobber=True)), 1, \
            lambda: (client.close(), shutil.rmtree(out, ignore_errors=True))
    else:
        raise SystemExit(f"unknown operation {op!r}: choose from {', '.join(OPS)}")
    return fn, times, client.close


def _ensure_db(ws: bl.Workspace) -> None:
    from oneprov import open_store
    with open_store(ws.db) as store:
        result = store.import_cache(ws.cache_dir, progress=False)
    if not result.unchanged_tables:
        print(f"(imported the cache into {ws.db} first)", file=sys.stderr)


class SqlTimes:
    """Time spent in each SQL statement (by its text), from SQLAlchemy's cursor events."""

    def __init__(self):
        import sqlalchemy as sa
        self.totals: dict[str, list[float]] = {}
        self._started: list[float] = []
        sa.event.listen(sa.engine.Engine, "before_cursor_execute", self.before)
        sa.event.listen(sa.engine.Engine, "after_cursor_execute", self.after)

    def before(self, conn, cursor, statement, parameters, context, executemany):
        self._started.append(time.perf_counter())

    def after(self, conn, cursor, statement, parameters, context, executemany):
        took = time.perf_counter() - self._started.pop()
        key = " ".join(statement.split())
        entry = self.totals.setdefault(key, [0.0, 0])
        entry[0] += took
        entry[1] += 1

    def report(self, top: int) -> str:
        rows = sorted(self.totals.items(), key=lambda kv: -kv[1][0])[:top]
        total = sum(v[0] for v in self.totals.values())
        lines = [f"--- SQL: {total:.3f} s in {sum(v[1] for v in self.totals.values())} statements ---"]
        for text, (took, n) in rows:
            lines.append(f"{took:8.3f} s {n:6d}x  {text[:300]}")
        self.totals.clear()
        return "\n".join(lines)


def profile(op: str, fn: Callable[[], Any], times: int, tool: str, top: int, threshold: float) -> str:
    head = f"=== {op}: {times} call(s) ==="
    if tool == "pyinstrument":
        from pyinstrument import Profiler
        profiler = Profiler(interval=0.0005)
        start = time.perf_counter()
        profiler.start()
        for _ in range(times):
            fn()
        profiler.stop()
        took = time.perf_counter() - start
        tree = profiler.output_text(unicode=True, color=False, time="percent_of_total",
                                    processor_options={"filter_threshold": threshold})
        flat = profiler.output_text(unicode=True, color=False, flat=True, time="percent_of_total")
        flat = "\n".join(flat.splitlines()[: top + 8])
        return f"{head} {bl.fmt_seconds(took / times)} per call\n{tree}\n--- flat (self time) ---\n{flat}\n"
    prof = cProfile.Profile()
    start = time.perf_counter()
    prof.enable()
    for _ in range(times):
        fn()
    prof.disable()
    took = time.perf_counter() - start
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out).strip_dirs()
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    return f"{head} {bl.fmt_seconds(took / times)} per call (under cProfile)\n{out.getvalue()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ops", nargs="+", choices=OPS, metavar="OP", help=", ".join(OPS))
    parser.add_argument("--scale", choices=sorted(bl.SCALES), default="medium")
    parser.add_argument("--workdir", type=Path, help="reuse (or make) the cache here; default: a temporary folder")
    parser.add_argument("--tool", choices=["pyinstrument", "cprofile"], default=None)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--threshold", type=float, default=0.02, help="pyinstrument: hide nodes under this share")
    parser.add_argument("--sql", action="store_true", help="also list the slowest SQL statements")
    args = parser.parse_args(argv)
    tool = args.tool
    if tool is None:
        try:
            import pyinstrument  # noqa: F401
            tool = "pyinstrument"
        except ImportError:
            tool = "cprofile"
    warnings.simplefilter("ignore")
    scale = bl.SCALES[args.scale]
    temporary = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="oneprov-hotspots-")) if temporary else args.workdir.absolute()
    try:
        ws = bl.prepare(workdir, scale, reuse=True, log=lambda t: print(t, file=sys.stderr))
        print(f"# hotspots, scale {scale.name}: {ws.n_sessions:,} sessions, {ws.n_datasets:,} datasets; "
              f"command: {bl.command_line()}\n")
        for op in args.ops:
            fn, times, teardown = setup(op, ws, scale)
            sql = SqlTimes() if args.sql else None
            try:
                print(profile(op, fn, times, tool, args.top, args.threshold), flush=True)
                if sql is not None:
                    print(sql.report(args.top), flush=True)
            finally:
                teardown()
    finally:
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
