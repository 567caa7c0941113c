"""What a query returned, as spans of records, and an import of changed tables that writes only what
changed (migration 0009): on both back ends, on both import paths (one transaction for a few rows,
many for a large table), each checked against the rule it must give the same answer as: every row
keeps its current record when the values are the same, and gets a new record otherwise."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from oneprov import ONE
from oneprov.store import digests, ingest
from oneprov.store.schema import dataset_records
from oneprov.store.records import merged_spans, spans_of
from oneprov.synthetic import make_repository
from oneprov.tables import Folder, datasets_frame, iter_datasets

VALUES = ["uuid", "session_uuid", "rel_path", "file_size", "hash", "exists", "qc", "default_revision"]


@pytest.fixture(params=["small", "large"])
def path(request, monkeypatch) -> int:
    """Which import path: one transaction (tables of up to 20,000 rows), or the large tables' one
    (its check pass, many transactions), here in batches of 300 rows and parts of 400. The batch
    size to import with."""
    if request.param == "large":
        monkeypatch.setattr(ingest, "SMALL_ROWS", 0)
        monkeypatch.setattr(ingest, "WRITE_SECONDS", 0.0)   # (parts of the writer's least size)
        monkeypatch.setattr(ingest, "FIRST_PART", 400)
        monkeypatch.setattr(ingest, "MIN_PART", 400)
        return 300
    return ingest.IMPORT_BATCH


@pytest.fixture
def tables(tmp_path):
    """A copy of a generated cache's tables (2,000 dataset rows), to change and import again."""
    repo = make_repository(tmp_path / "repo", n_sessions=100, datasets_per_session=20, write_files=False)
    folder = tmp_path / "tables"
    folder.mkdir()
    for name in ("sessions.pqt", "datasets.pqt"):
        shutil.copy(repo.root / name, folder / name)
    return folder


def change(folder, *, every: int = 50, drop: int = 0, add: int = 0) -> pd.DataFrame:
    """Give every ``every``-th dataset row another md5 and QC, drop the last ``drop`` rows, add
    ``add`` rows (copies of the first rows with new ids), in the file itself (with pyarrow, every
    other value as it was); return the new table, normalised."""
    table = pq.read_table(folder / "datasets.pqt")
    table = table.slice(0, table.num_rows - drop)
    at = pa.array(np.arange(table.num_rows) % every == 0)
    for column, value in (("hash", "0" * 32), ("qc", "FAIL")):
        i = table.schema.get_field_index(column)
        new = pc.if_else(at, pa.scalar(value), table.column(i).cast(pa.string()))
        table = table.set_column(i, table.schema.field(i), new.cast(table.schema.field(i).type))
    if add:
        extra = table.slice(0, add)
        i = extra.schema.get_field_index("id")
        ids = pa.array([f"00000000-0000-4000-8000-{k:012d}" for k in range(add)]).cast(extra.schema.field(i).type)
        table = pa.concat_tables([table, extra.set_column(i, extra.schema.field(i), ids)])
    pq.write_table(table, folder / "datasets.pqt")
    return pd.concat(iter_datasets(folder / "datasets.pqt"), ignore_index=True)


def records_of(store, query: int) -> pd.DataFrame:
    """The dataset records ``query`` returned (through the view), with their values."""
    return store.sql(f"SELECT r.id, {', '.join('r.' + c for c in VALUES[:-3])}, r.qc, r.\"exists\", "
                     "r.default_revision FROM query_datasets q JOIN dataset_records r ON r.id = q.record_id "
                     f"WHERE q.query_id = {int(query)} ORDER BY r.uuid, r.session_uuid, r.rel_path")


def spans_are_sound(store) -> None:
    """Every query's spans are apart (sorted, not touching) and cover records only."""
    for table, records in (("query_dataset_spans", "dataset_records"), ("query_session_spans", "session_records")):
        spans = store.sql(f"SELECT query_id, first_id, last_id FROM {table} ORDER BY query_id, first_id")
        for _, group in spans.groupby("query_id"):
            pairs = list(zip(group.first_id, group.last_id))
            assert merged_spans(pairs) == pairs and all(a <= b for a, b in pairs)
        covered = int((spans.last_id - spans.first_id + 1).sum())
        assert store.sql(f"SELECT count(*) AS n FROM {table} s JOIN {records} r "
                         "ON r.id BETWEEN s.first_id AND s.last_id").n[0] == covered


def test_spans_of_record_ids():
    assert spans_of([]) == [] and spans_of([4]) == [(4, 4)]
    assert spans_of(np.array([9, 1, 2, 3, 7, 8, 3])) == [(1, 3), (7, 9)]
    assert merged_spans([(7, 9), (1, 3), (4, 5), (20, 20)]) == [(1, 5), (7, 9), (20, 20)]


def test_a_first_import_is_one_span(store, tables, path):
    result = store.import_cache(tables, batch_size=path)
    assert store.sql("SELECT count(*) AS n FROM query_dataset_spans").n[0] == 1
    assert store.sql("SELECT count(*) AS n FROM query_session_spans").n[0] == 1
    assert len(records_of(store, result.query_id)) == result.datasets == 2000
    stored = store.sql(f"SELECT sum(length(record_ids)) AS n FROM query_digests "
                       f"WHERE query_id = {result.query_id} AND records = 'dataset_records'").n[0]
    assert stored == 8 * 2000   # a digest of every record
    parts = store.sql(f"SELECT count(*) AS n FROM query_digests WHERE query_id = {result.query_id} "
                      "AND records = 'dataset_records'").n[0]
    assert parts == (1 if path == ingest.IMPORT_BATCH else -(-2000 // path))   # (with each part's rows)
    spans_are_sound(store)


def test_changed_tables_write_only_what_changed(store, tables, path):
    first = store.import_cache(tables, batch_size=path)
    before = records_of(store, first.query_id).set_index(["uuid", "session_uuid", "rel_path"])
    new_table = change(tables, every=50, drop=3, add=2)
    second = store.import_cache(tables, batch_size=path)
    assert second.datasets == 2000 - 3 + 2 and second.changed == 40 + 2
    after = records_of(store, second.query_id).set_index(["uuid", "session_uuid", "rel_path"])
    assert len(after) == second.datasets
    # the rule: a row's record holds its values; unchanged rows keep theirs, the others are new
    expected = new_table.rename(columns={"id": "uuid", "eid": "session_uuid"}).set_index(
        ["uuid", "session_uuid", "rel_path"])
    for column in ("qc", "hash"):
        assert after[column].sort_index().fillna("-").tolist() == expected[column].sort_index().fillna("-").tolist()
    same = after.index.intersection(before.index)
    kept = (before.loc[same].hash.fillna("-") == after.loc[same].hash.fillna("-")) & (before.loc[same].qc == after.loc[same].qc)
    assert (after.loc[same][kept].id == before.loc[same][kept].id).all() and kept.sum() == 2000 - 3 - 40
    assert (after.loc[same][~kept].id > before.id.max()).all()
    # few spans: one per run of unchanged rows, and the new records
    assert store.sql(f"SELECT count(*) AS n FROM query_dataset_spans WHERE query_id = {second.query_id}").n[0] <= 45
    spans_are_sound(store)
    # the current state of every row of the tables is the second import's (a dropped row keeps its last)
    current = store.sql("SELECT id, session_id, rel_path, qc FROM datasets")
    merged = current.merge(new_table.rename(columns={"eid": "session_id"}), on=["id", "session_id", "rel_path"])
    assert len(current) == 2000 + 2 and len(merged) == len(new_table) and (merged.qc_x == merged.qc_y).all()


@pytest.mark.parametrize("every", [30, 3])   # (3: more changed rows than a part of the large path)
def test_the_same_answer_when_compared_row_by_row(db_url, tmp_path, tables, path, monkeypatch, every):
    """The digests only shorten the comparison: with none to compare with, the same tables give
    the same records, state for state."""
    from oneprov import open_store

    results = {}
    for compare in ("digests", "row by row"):
        if compare == "row by row":
            monkeypatch.setattr(digests, "baseline", lambda *args: None)
        folder = tmp_path / compare
        shutil.copytree(tables, folder)
        url = db_url if compare == "digests" else str(tmp_path / "row_by_row.sqlite")
        with open_store(url) as store:
            store.import_cache(folder, batch_size=path)
            change(folder, every=every, drop=5, add=4)
            second = store.import_cache(folder, batch_size=path)
            rows = records_of(store, second.query_id).drop(columns="id")
            rows["exists"] = rows["exists"].astype(bool)   # (SQLite's 0/1, PostgreSQL's booleans)
            rows["default_revision"] = [None if pd.isna(v) else bool(v) for v in rows["default_revision"]]
            results[compare] = (second.changed, rows.astype(str).reset_index(drop=True))
            spans_are_sound(store)
    assert results["digests"][0] == results["row by row"][0]
    pd.testing.assert_frame_equal(results["digests"][1], results["row by row"][1])


def test_rows_another_cache_recorded_since_are_compared_with_their_current_record(store, tmp_path, tables, path):
    """Cache A, then cache C with other values for A's rows, then A again with a few rows
    changed: every row of A is current again (as a comparison with each row's current record
    gives), though most are unchanged since A's first import."""
    other = tmp_path / "other"
    shutil.copytree(tables, other)
    store.import_cache(tables, batch_size=path)
    change(other, every=1)                        # every row other
    store.import_cache(other, batch_size=path)
    table = change(tables, every=100)
    again = store.import_cache(tables, batch_size=path)
    current = store.sql("SELECT id, session_id, rel_path, qc, hash FROM datasets")
    merged = current.merge(table.rename(columns={"eid": "session_id"}), on=["id", "session_id", "rel_path"])
    assert len(merged) == 2000 and (merged.qc_x == merged.qc_y).all()
    assert (merged.hash_x.fillna("-") == merged.hash_y.fillna("-")).all()
    # each row of A differs from its current record (C's), but the 20 changed to what C says
    assert again.changed == 2000 - 20
    spans_are_sound(store)


def test_a_copy_of_the_tables_elsewhere_is_compared_with_them(store, tmp_path, tables, path):
    store.import_cache(tables, batch_size=path)
    copy = tmp_path / "copy"
    shutil.copytree(tables, copy)
    change(copy, every=200)
    assert store.import_cache(copy, batch_size=path).changed == 10


def test_many_changed_rows_are_read_again(store, tables, path, monkeypatch):
    """More changed rows than an import keeps from its check: the table is read again, with the
    same result."""
    monkeypatch.setattr(ingest, "KEEP_CHANGED", 5)
    monkeypatch.setattr(ingest, "KEEP_READ", 0)   # (nor all the rows)
    store.import_cache(tables, batch_size=path)
    change(tables, every=10)
    again = store.import_cache(tables, batch_size=path)
    assert again.changed == 200
    assert len(records_of(store, again.query_id)) == 2000
    spans_are_sound(store)


@pytest.mark.parametrize("keep_read", [ingest.KEEP_READ, 1000], ids=["kept", "too many to keep"])
def test_a_table_the_check_kept_is_not_read_again_and_gives_the_same_records(store, tables, path, monkeypatch,
                                                                            keep_read):
    """An import's check keeps a table of up to KEEP_READ rows and writes the rows from there; a
    larger table is read again to be written (one import, one transaction: read once). The
    records hold the table's values either way."""
    import oneprov.tables

    monkeypatch.setattr(ingest, "KEEP_READ", keep_read)
    reads, read = [], oneprov.tables.Folder.dataset_batches
    monkeypatch.setattr(oneprov.tables.Folder, "dataset_batches",
                        lambda *a, **k: (reads.append(1), read(*a, **k))[1])
    result = store.import_cache(tables, batch_size=path)
    assert len(reads) == (1 if path == ingest.IMPORT_BATCH or keep_read >= 2000 else 2)
    stored = records_of(store, result.query_id)
    table = pd.concat(iter_datasets(tables / "datasets.pqt"), ignore_index=True).rename(
        columns={"id": "uuid", "eid": "session_uuid"}).sort_values(["uuid", "session_uuid", "rel_path"])
    assert len(stored) == len(table) == 2000
    for column in ("uuid", "session_uuid", "rel_path", "qc"):
        assert stored[column].tolist() == table[column].tolist(), column
    assert stored["hash"].fillna("-").tolist() == table["hash"].fillna("-").tolist()


def test_searches_lists_and_merges_are_spans_too(tmp_path, tables):
    one = ONE(cache_dir=tables, mode="local", db=tmp_path / "p.sqlite")
    eids = one.search()
    one.list_datasets(eids[0])
    store = one.store
    listed = store.sql("SELECT id, n_datasets FROM queries WHERE method = 'list_datasets'")
    assert store.sql(f"SELECT count(*) AS n FROM query_datasets WHERE query_id = {listed.id[0]}").n[0] == listed.n_datasets[0]
    assert store.sql("SELECT count(*) AS n FROM query_sessions q JOIN queries s ON s.id = q.query_id "
                     "WHERE s.method = 'search'").n[0] == len(eids)
    spans_are_sound(store)
    one.close()


def test_digests_depend_on_a_rows_values_only(tables):
    frame = pd.concat(iter_datasets(tables / "datasets.pqt"), ignore_index=True)
    whole = digests.row_digests(frame, "dataset_records")
    part = digests.row_digests(frame.iloc[7:50].reset_index(drop=True), "dataset_records")
    assert (whole[7:50] == part).all()
    assert len(np.unique(whole[:, 0])) == len(frame)
    for column, value in (("qc", "CRITICAL"), ("hash", None), ("hash", "x" * 31), ("file_size", None),
                          ("exists", False), ("default_revision", None), ("rel_path", "alf/other.npy")):
        changed = frame.iloc[:1].copy()
        changed[column] = pd.Series([value], dtype=changed[column].dtype if value is not None else object)
        after = digests.row_digests(changed, "dataset_records")
        assert (after[0, :2] != whole[0, :2]).all(), column
        assert (after[0, 2] == whole[0, 2]) == (column != "rel_path")   # the identity: id, session, path


def test_a_rows_digest_does_not_depend_on_the_other_rows_of_its_batch(tables):
    """A row without an MD5 gets one digest, alone or next to rows with one (the first scheme mixed
    the MD5 words only into batches holding an MD5: an unchanged row could look changed); the
    same rows as arrow and as a frame give the same digests."""
    frame = pd.concat(iter_datasets(tables / "datasets.pqt"), ignore_index=True).iloc[:100]
    alone = frame.iloc[:1].assign(hash=[None])
    assert frame["hash"].iloc[1:].notna().any()
    assert (digests.row_digests(pd.concat([alone, frame.iloc[1:]]), "dataset_records")[0] ==
            digests.row_digests(alone, "dataset_records")[0]).all()
    batch = next(Folder.open(tables).dataset_batches(100))
    assert (digests.row_digests(datasets_frame(batch), "dataset_records") ==
            digests.row_digests(batch, "dataset_records")).all()


def test_db_check_finds_spans_that_overlap_or_cover_no_record(tmp_path, tables):
    import sqlite3

    from oneprov import open_store
    from oneprov.store import migrate

    db = tmp_path / "p.sqlite"
    with open_store(db) as store:
        store.import_cache(tables, batch_size=path)
    assert migrate.check(db) == []
    raw = sqlite3.connect(db)   # (past the append-only triggers, as only someone writing the file could)
    raw.execute("DROP TRIGGER oneprov_query_dataset_spans_no_replace")
    raw.execute("INSERT INTO query_dataset_spans VALUES (1, 5, 9)")
    raw.execute("INSERT INTO query_dataset_spans VALUES (1, 5000, 5001)")
    raw.commit()
    raw.close()
    problems = migrate.check(db)
    assert any("query 1 from record 5 overlaps" in p for p in problems)
    assert any("cover 2 ids that are not dataset_records" in p for p in problems)


def test_a_baseline_finds_each_row_by_its_digest_and_identity(monkeypatch):
    """Baseline.match and .replaces against a plain dictionary, on random digests (some rows
    unchanged, some changed, some new, some recorded since by another query)."""
    monkeypatch.setattr(digests, "PART_ROWS", 64)   # (the unchanged records, a part at a time)
    rng = np.random.default_rng(7)
    earlier = rng.integers(0, 2 ** 63, size=(1000, 3), dtype=np.int64).view(np.uint64)
    ids = np.arange(1001, 2001, dtype=np.int64)
    rows = earlier[rng.permutation(1000)[:600]].copy()
    rows[:100, 1] ^= np.uint64(1)                          # changed: another second lane
    rows[100:150] = rng.integers(0, 2 ** 63, size=(50, 3), dtype=np.int64).view(np.uint64)   # new rows
    newer = rows[150:160, 2].view(np.int64).copy()          # recorded by another query since
    baseline = digests.Baseline(3, ids, earlier, np.unique(newer))
    by_digest = {(int(d[0]), int(d[1])): int(i) for d, i in zip(earlier, ids)}
    by_identity = {int(d[2]) for d in earlier}
    found, replaces = baseline.match(rows), baseline.replaces(rows)
    for k, row in enumerate(rows):
        since = int(row[2].view(np.int64)) in set(newer.tolist())
        expected = -1 if since else by_digest.get((int(row[0]), int(row[1])), -1)
        assert found[k] == expected
        assert replaces[k] == (int(row[2]) in by_identity and not since)
    unchanged = np.concatenate([ids for ids, _ in baseline.unchanged()])
    assert unchanged.tolist() == sorted(found[found >= 0].tolist()) and len(unchanged) == 440
    assert baseline.usable and not digests.Baseline(3, ids[:2], earlier[[0, 0]], newer).usable


def test_rows_of_a_query_that_ran_alongside_the_earlier_import_are_compared_row_by_row(store):
    """A query that started before the earlier import completed, and completed after it, may have
    written a newer record of a row with an id below the import's last: the baseline names that
    row among those recorded since (they are compared with their current record)."""
    r, s = ("aaaaaaaa-0000-4000-8000-000000000001", "bbbbbbbb-0000-4000-8000-000000000002")
    session = "cccccccc-0000-4000-8000-000000000003"
    rows = pd.DataFrame({"id": [r, s], "eid": [session] * 2, "rel_path": ["alf/x.npy", "alf/y.npy"],
                         "file_size": pd.array([1, 2], dtype="Int64"), "hash": [None, None], "exists": [True, True],
                         "qc": ["PASS", "PASS"], "default_revision": [None, None]})
    t = "'2026-01-01 00:00:0{}'"
    with store.engine.begin() as conn:
        conn.exec_driver_sql(f"INSERT INTO queries (id, method, source, started_at, completed_at) VALUES "
                             f"(1, 'import_cache', '/a', {t.format(1)}, {t.format(3)}), "
                             f"(2, 'rest', 'http://alyx', {t.format(2)}, {t.format(4)})")
        conn.exec_driver_sql(
            'INSERT INTO dataset_records (id, uuid, session_uuid, rel_path, collection, revision, name, "exists", qc, '
            f"query_id, first_seen_at) VALUES (1, '{r}', '{session}', 'alf/x.npy', 'alf', '', 'x.npy', TRUE, 'PASS', 1, "
            f"{t.format(1)}), (2, '{r}', '{session}', 'alf/x.npy', 'alf', '', 'x.npy', TRUE, 'FAIL', 2, {t.format(2)}), "
            f"(3, '{s}', '{session}', 'alf/y.npy', 'alf', '', 'y.npy', TRUE, 'PASS', 1, {t.format(1)})")
        conn.exec_driver_sql("INSERT INTO query_dataset_spans VALUES (1, 1, 1), (1, 3, 3), (2, 2, 2)")
        digests.store_digests(conn, 1, "dataset_records", np.array([1, 3]), digests.row_digests(rows, "dataset_records"))
    with store.reading() as conn:
        found = digests.baseline(conn, "/a", dataset_records)
    assert found is not None and found.query == 1
    assert found.newer.tolist() == sorted(digests.row_identities(rows.iloc[:1], "dataset_records").tolist())
    # so row r, unchanged since the import, is not taken as unchanged: its current record is query 2's
    assert found.match(digests.row_digests(rows, "dataset_records")).tolist() == [-1, 3]
