"""Bad input gets a clear error naming it, and the database is left as it was."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from oneprov import ONE, BadInputError, DatabaseError, open_store
from oneprov.store.engine import warn_if_network

ONE_FIXTURES = Path(__import__("one").__file__).parent / "tests" / "fixtures"


def snapshot(store) -> dict:
    from oneprov.store.schema import metadata
    return {t: sorted(map(repr, store.sql(f"SELECT * FROM {t}").itertuples(index=False))) for t in metadata.tables}


def raw_datasets(repo) -> pd.DataFrame:
    df = pq.read_table(repo.root / "datasets.pqt").to_pandas().reset_index()
    df["qc"] = df["qc"].astype(str)
    return df


def write(folder: Path, repo, datasets: pd.DataFrame | bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(repo.root / "sessions.pqt", folder / "sessions.pqt")
    if isinstance(datasets, bytes):
        (folder / "datasets.pqt").write_bytes(datasets)
    else:
        meta = pq.read_schema(repo.root / "datasets.pqt").metadata
        table = pa.Table.from_pandas(datasets, preserve_index=False)
        pq.write_table(table.replace_schema_metadata({**table.schema.metadata, b"one_metadata": meta[b"one_metadata"]}),
                       folder / "datasets.pqt")
    return folder


def bad_tables(repo) -> dict[str, tuple[object, str]]:
    """name -> (datasets table or bytes, words the error must contain)."""
    good = raw_datasets(repo)
    data = (repo.root / "datasets.pqt").read_bytes()
    cases = {
        "malformed uuid": (good.assign(id=good["id"].where(good.index != 7, "1234-not-a-uuid")), "1234-not-a-uuid"),
        "unknown qc": (good.assign(qc=good["qc"].where(good.index != 3, "EXCELLENT")), "EXCELLENT"),
        "rel_path escaping the session": (good.assign(rel_path=good["rel_path"].where(good.index != 5, "../../../etc/passwd")),
                                          "../../../etc/passwd"),
        "absolute rel_path": (good.assign(rel_path=good["rel_path"].where(good.index != 5, "/etc/passwd")), "/etc/passwd"),
        "missing column": (good.drop(columns=["rel_path"]), "rel_path"),
        "wrong dtype": (good.assign(file_size="big"), "file_size"),
        "corrupt bytes": (data[:100] + b"\x00garbage\xff" * 50 + data[-200:], "datasets.pqt"),
        "truncated": (data[: len(data) // 2], "datasets.pqt"),
        "not parquet": (b"eid,id,rel_path\n1,2,3\n", "datasets.pqt"),
    }
    return cases


CASES = ["malformed uuid", "unknown qc", "rel_path escaping the session", "absolute rel_path", "missing column",
         "wrong dtype", "corrupt bytes", "truncated", "not parquet"]


@pytest.mark.parametrize("case", CASES)
def test_bad_tables_are_refused_and_change_nothing(case, repo, tmp_path):
    store = open_store(tmp_path / "p.sqlite")
    store.import_cache(repo.root)
    run = store.start_run()
    store.record_access(run, [{"method": "load_dataset", "outcome": "loaded", "dataset_id": repo.revised_id}])
    before = snapshot(store)
    table, words = bad_tables(repo)[case]
    folder = write(tmp_path / "bad", repo, table)
    with pytest.raises(BadInputError) as err:
        store.import_cache(folder, batch_size=4)
    assert "datasets.pqt" in str(err.value) and words in str(err.value)
    assert snapshot(store) == before


def test_bad_tables_change_nothing_on_postgresql(pg, repo, tmp_path):
    store = open_store(pg.create_database())
    store.import_cache(repo.root)
    before = snapshot(store)
    for case in ("unknown qc", "truncated"):
        table, _ = bad_tables(repo)[case]
        with pytest.raises(BadInputError):
            store.import_cache(write(tmp_path / case.replace(" ", "_"), repo, table), batch_size=4)
    assert snapshot(store) == before


def test_legacy_alyx_export_imports_as_one_api_reads_it(tmp_path):
    """one-api's 2021 fixture: int64 id pairs, no qc, many null sizes and hashes, one id under two
    collections: every row one-api keeps is kept (that id twice), without a warning."""
    for name in ("sessions.pqt", "datasets.pqt"):
        shutil.copy(ONE_FIXTURES / name, tmp_path / name)
    from one.alf.cache import load_tables
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = load_tables(tmp_path)
    store = open_store(tmp_path / "p.sqlite")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = store.import_cache(tmp_path)
    ref_datasets = reference["datasets"].reset_index()
    assert result.sessions == len(reference["sessions"])
    assert result.datasets == len(ref_datasets) > ref_datasets["id"].astype(str).nunique()   # 693 rows, 692 ids
    ours = store.sql("SELECT id, session_id, rel_path, file_size, hash, qc FROM datasets")
    assert sorted(zip(ours.id, ours.rel_path)) == sorted(zip(ref_datasets["id"].astype(str), ref_datasets["rel_path"]))
    assert set(ours.session_id) == set(ref_datasets["eid"].astype(str))
    assert (ours.qc == "NOT_SET").all()
    assert ours.file_size.isna().sum() > 0 and ours.hash.isna().sum() > 0     # unknown, stored as NULL
    sessions = store.sql("SELECT id, subject, projects FROM sessions").set_index("id")
    ref_sessions = reference["sessions"]
    ref_sessions.index = ref_sessions.index.astype(str)
    assert sessions.subject.sort_index().tolist() == ref_sessions.subject.sort_index().tolist()


def test_dataset_with_unknown_size_and_hash_loads(tmp_path):
    """A null file_size/hash means unknown: the dataset loads (one-api's load crashes on it)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    for name in ("sessions.pqt", "datasets.pqt"):
        shutil.copy(ONE_FIXTURES / name, cache / name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one = ONE(cache_dir=cache, db=tmp_path / "p.sqlite")
    row = one.store.sql("SELECT d.id, d.rel_path, d.session_id FROM datasets d "
                        "WHERE d.file_size IS NULL AND d.hash IS NULL AND d.rel_path LIKE '%.npy' LIMIT 1").iloc[0]
    path = one.eid2path(row.session_id) / row.rel_path
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.arange(5))
    assert one.load_dataset_from_id(row.id).tolist() == [0, 1, 2, 3, 4]
    assert one.store.sql("SELECT outcome FROM access_log").outcome.tolist() == ["loaded"]


def test_wrong_postgresql_password_and_url(pg):
    wrong = pg.url_for(pg.dbname, password="not-the-password")
    with pytest.raises(DatabaseError) as err:
        open_store(wrong)
    assert "password authentication failed" in str(err.value)
    assert "not-the-password" not in str(err.value) and "***" in str(err.value)
    with pytest.raises(DatabaseError, match="does not exist"):
        open_store(pg.url_for("no_such_database"))
    with pytest.raises(DatabaseError, match="unsupported database"):
        open_store("mysql://someone@localhost/db")


READ_ONLY_SCRIPT = """
import sys
from oneprov import open_store, DatabaseError
try:
    store = open_store(sys.argv[1])
    store.start_run("x")
except DatabaseError as err:
    print("ERROR", err)
else:
    print("WROTE")
"""


def as_unprivileged(args: list[str]) -> subprocess.CompletedProcess:
    """Run a command that file permissions apply to: as root, without the capabilities that ignore them."""
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"] if os.geteuid() == 0 else []
    return subprocess.run(prefix + args, capture_output=True, text=True)


@pytest.mark.parametrize("what", ["file", "folder"])
def test_read_only_database_file_or_folder(what, repo, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    db = folder / "p.sqlite"
    store = open_store(db)
    store.import_cache(repo.root)
    store.close()
    before = db.read_bytes()
    db.chmod(0o444)
    if what == "folder":
        folder.chmod(0o555)
    try:
        proc = as_unprivileged([sys.executable, "-c", READ_ONLY_SCRIPT, str(db)])
    finally:
        folder.chmod(0o755)
        db.chmod(0o644)
    assert proc.stdout.startswith("ERROR"), proc.stdout + proc.stderr
    assert str(db) in proc.stdout and "Traceback" not in proc.stderr
    assert db.read_bytes() == before


def test_full_disk_during_export(repo, tmp_path):
    """A file size limit makes the export fail half-way: a clear error, the previous file intact."""
    store = open_store(tmp_path / "p.sqlite")
    store.import_cache(repo.root)
    out = tmp_path / "out"
    out.mkdir()
    (out / "datasets.pqt").write_bytes(b"previous")
    n_exports = len(store.sql("SELECT * FROM exports"))
    script = textwrap.dedent("""
        import resource, signal, sys
        from oneprov import open_store
        from oneprov.cli import main
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)        # a full disk: writes fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))
        sys.argv = ["oneprov", "export", "cache", sys.argv[1], "--clobber", "--db", sys.argv[2]]
        main()
    """)
    proc = subprocess.run([sys.executable, "-c", script, str(out), str(tmp_path / "p.sqlite")],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("Error:") and "File too large" in proc.stderr
    assert (out / "datasets.pqt").read_bytes() == b"previous"
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []     # no temporary leftovers
    assert len(open_store(tmp_path / "p.sqlite").sql("SELECT * FROM exports")) <= n_exports + 1  # sessions.pqt at most


def test_network_filesystem_warning(tmp_path):
    mounts = "server:/export /mnt/lab nfs4 rw 0 0\n/dev/vda / ext4 rw 0 0\n"
    with pytest.warns(RuntimeWarning, match="network file system"):
        assert warn_if_network(Path("/mnt/lab/provenance.sqlite"), mounts)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not warn_if_network(Path("/srv/provenance.sqlite"), mounts)
        open_store(tmp_path / "local.sqlite").close()            # a local disk: no warning


def test_session_path_cannot_escape_the_cache_folder(repo, tmp_path):
    from oneprov import tables
    cache = shutil.copytree(repo.root, tmp_path / "cache")
    sessions = tables.read_sessions(cache / "sessions.pqt")
    sessions.loc[sessions["id"] == repo.eid, ["lab", "subject"]] = [None, "../../../../../../tmp/evil"]
    tables.write_sessions(sessions, cache / "sessions.pqt", {"origin": "test"})
    one = ONE(cache_dir=cache, db=tmp_path / "p.sqlite")
    with pytest.raises(BadInputError, match="outside the cache folder"):
        one.load_dataset(repo.eid, "spikes.times.npy")
    assert one.store.sql("SELECT COUNT(*) AS n FROM access_events").n[0] == 0
