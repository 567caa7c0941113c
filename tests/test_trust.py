"""What a provenance store must never do: record as imported something other than what was read,
or lose a load attempt to a bad name. Real processes, real files, both back ends."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from oneprov import BadInputError, open_store
from oneprov.synthetic import make_repository
from oneprov.tables import Folder

LOCKER = textwrap.dedent("""
    import sqlite3, sys, time
    con = sqlite3.connect(sys.argv[1], isolation_level=None)
    con.execute("BEGIN IMMEDIATE")
    print("locked", flush=True)
    sys.stdin.readline()                      # held until the test says so
    con.rollback()
""")

# The real CLI, with one line printed once the tables are hashed (so the test knows when to replace them).
HASHING_IMPORTER = textwrap.dedent("""
    import sys
    from oneprov import cli, tables
    checksum = tables.Folder.checksum
    def announced(self):
        value = checksum(self)
        print("hashed", flush=True)
        return value
    tables.Folder.checksum = announced
    cli.main(sys.argv[1:])
""")


def test_tables_replaced_during_an_import_are_not_recorded_under_the_old_checksum(tmp_path):
    """The import hashes the tables, then waits for the write lock (another process holds it) while
    the datasets table is replaced: it refuses to complete, naming the file, and a new import then
    records the new content with the new content's checksum."""
    tables = make_repository(tmp_path / "repo", write_files=False).root
    other = make_repository(tmp_path / "other", seed=7, write_files=False).root
    db = tmp_path / "p.sqlite"
    open_store(db).close()
    locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(db)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert locker.stdout.readline().strip() == "locked"
    importer = subprocess.Popen([sys.executable, "-c", HASHING_IMPORTER, "import-cache", str(tables), "--db", str(db)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert importer.stdout.readline().strip() == "hashed"  # it has hashed the tables; the lock is still held
    time.sleep(0.5)                                         # (and it is waiting for it, most likely)
    replacement = tables / "datasets.pqt.new"
    replacement.write_bytes((other / "datasets.pqt").read_bytes())
    os.replace(replacement, tables / "datasets.pqt")
    locker.stdin.write("release\n")
    locker.stdin.flush()
    out, err = importer.communicate(timeout=120)
    locker.wait(timeout=30)
    assert importer.returncode != 0 and "Traceback" not in err, err
    assert f"{tables / 'datasets.pqt'} changed while it was being imported" in err
    store = open_store(db)
    done = store.sql("SELECT checksum FROM queries WHERE method = 'import_cache' AND completed_at IS NOT NULL")
    assert done.empty
    result = store.import_cache(tables)
    (checksum,) = store.sql("SELECT checksum FROM queries WHERE id = :q", {"q": result.query_id}).checksum
    assert checksum == Folder.open(tables).checksum()           # of the tables as they now are
    imported = set(store.sql("SELECT id FROM datasets").id)
    assert imported == set(pd.read_parquet(other / "datasets.pqt").reset_index()["id"].astype(str))
    store.close()


def test_file_written_to_during_an_import_is_refused(tmp_path, monkeypatch):
    """The same check for a file written in place (same inode): its size or mtime moves."""
    tables = make_repository(tmp_path / "repo", write_files=False).root
    store = open_store(tmp_path / "p.sqlite")
    folder = Folder.open(tables)
    folder.checksum()
    folder.verify()                                       # unchanged: fine
    with open(tables / "sessions.pqt", "ab") as f:
        f.write(b"\0")
    with pytest.raises(Exception, match="sessions.pqt changed while it was being imported"):
        folder.verify()
    store.close()


def _name_cases(repo) -> dict[str, tuple[str, pd.DataFrame, str]]:
    """case -> (table, the edited table, words the error must hold)."""
    sessions = pd.read_parquet(repo.sessions_table).reset_index()
    datasets = pd.read_parquet(repo.datasets_table).reset_index()

    def edit(frame, column, row, value):
        frame = frame.copy()
        frame[column] = frame[column].astype(object)
        frame.loc[row, column] = value
        return frame

    long_name = "x" * 256 + ".npy"
    return {
        "NUL in rel_path": ("datasets", edit(datasets, "rel_path", 3, "alf/spikes\x00.times.npy"),
                            "column 'rel_path', row 3", "NUL byte"),
        "long file name": ("datasets", edit(datasets, "rel_path", 4, f"alf/{long_name}"),
                           "column 'rel_path', row 4", "longer than 255 bytes"),
        "long rel_path": ("datasets", edit(datasets, "rel_path", 5, "/".join(["d" * 200] * 16) + "/a.npy"),
                          "column 'rel_path', row 5", "longer than 3072 bytes"),
        "long non-ASCII name": ("datasets", edit(datasets, "rel_path", 6, "alf/" + "é" * 130 + ".npy"),
                                "column 'rel_path', row 6", "longer than 255 bytes"),
        "NUL in subject": ("sessions", edit(sessions, "subject", 1, "SYN\x000001"), "column 'subject', row 1",
                           "NUL byte"),
        "long subject": ("sessions", edit(sessions, "subject", 2, "S" * 300), "column 'subject', row 2",
                         "longer than 255 bytes"),
        "long lab": ("sessions", edit(sessions, "lab", 0, "L" * 300), "column 'lab', row 0", "longer than 255"),
        "subject too long to store": ("sessions", edit(sessions, "subject", 1, "S" * 230), "column 'subject', row 1",
                                      "longer than 200 characters"),
        "hash too long to store": ("datasets", edit(datasets, "hash", 2, "h" * 200), "column 'hash', row 2",
                                   "longer than 128 characters"),
        "revision too long to store": ("datasets", edit(datasets, "rel_path", 1, "alf/#" + "r" * 220 + "#/a.npy"),
                                       "column 'rel_path', row 1", "revision is longer than 200"),
        "NUL in task_protocol": ("sessions", edit(sessions, "task_protocol", 2, "ephys\x00"),
                                 "column 'task_protocol', row 2", "NUL byte"),
    }


def test_unusable_names_are_refused_at_import_on_both_back_ends(db_url, repo, tmp_path):
    """A NUL byte (PostgreSQL cannot store it) or a name longer than file systems take (every load of
    it would fail in the file system, before being recorded) is refused at import, on SQLite as on
    PostgreSQL, naming the file, column and row; nothing stored changes."""
    from test_bad_input import snapshot

    store = open_store(db_url)
    store.import_cache(repo.root)
    before = snapshot(store)
    for case, (table, frame, where, why) in _name_cases(repo).items():
        folder = tmp_path / case.replace(" ", "_")
        folder.mkdir()
        for name in ("sessions", "datasets"):
            source = frame if name == table else pd.read_parquet(getattr(repo, f"{name}_table")).reset_index()
            source.to_parquet(folder / f"{name}.pqt", index=False)
        with pytest.raises(BadInputError) as caught:
            store.import_cache(folder)
        message = str(caught.value)
        assert str(folder / f"{table}.pqt") in message and where in message and why in message, (case, message)
        assert snapshot(store) == before, case
    store.close()


def test_tables_without_a_hash_column_warn_naming_the_file(tmp_path, repo):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "sessions.pqt").write_bytes(repo.sessions_table.read_bytes())
    pd.read_parquet(repo.datasets_table).reset_index().drop(columns=["hash"]).to_parquet(cache / "datasets.pqt")
    store = open_store(tmp_path / "p.sqlite")
    with pytest.warns(UserWarning, match=f"{cache / 'datasets.pqt'}: the datasets table has no 'hash' column"):
        store.import_cache(cache)
    store.close()


def test_blank_project_is_refused(tmp_path, repo):
    from oneprov import ONE

    for blank in ("", "  "):
        with pytest.raises(BadInputError, match="a project needs a name"):
            ONE(cache_dir=repo.root, db=tmp_path / "p.sqlite", project=blank)
        store = open_store(tmp_path / "q.sqlite")
        with pytest.raises(BadInputError, match="a project needs a name"):
            store.start_run(blank)
        store.close()
    assert not (tmp_path / "p.sqlite").exists()


@pytest.mark.parametrize("link", ["file", "collection"])
def test_symlink_out_of_the_cache_is_refused_like_a_session_folder(link, tmp_path, repo):
    """A dataset file, or its collection folder, that is a symbolic link to outside the cache folder:
    the load is refused (the file would not be the repository's), as for a session folder."""
    from oneprov import ONE

    cache = Path(shutil.copytree(repo.root, tmp_path / "cache", ignore=shutil.ignore_patterns("provenance*")))
    outside = tmp_path / "outside"
    one = ONE(cache_dir=cache, db=tmp_path / "p.sqlite")
    session = one.eid2path(repo.eid)
    rel_path = next(p for p in one.list_datasets(repo.eid) if p.startswith("alf/") and p.count("/") == 1)
    target = session / rel_path
    if link == "file":
        outside.mkdir()
        shutil.move(target, outside / target.name)
        target.symlink_to(outside / target.name)
    else:
        shutil.move(session / "alf", outside)
        (session / "alf").symlink_to(outside, target_is_directory=True)
    with pytest.raises(BadInputError, match="is a link to outside the cache folder"):
        one.load_dataset(repo.eid, rel_path)
    one.close()


def test_symlink_within_the_cache_is_followed(tmp_path, repo):
    """A collection folder that is a symbolic link to another folder of the cache loads (only links
    that lead outside are refused), and so does the plain file next to it."""
    from oneprov import ONE

    cache = Path(shutil.copytree(repo.root, tmp_path / "cache", ignore=shutil.ignore_patterns("provenance*")))
    one = ONE(cache_dir=cache, db=tmp_path / "p.sqlite")
    session = one.eid2path(repo.eid)
    rel_path = next(p for p in one.list_datasets(repo.eid) if p.startswith("alf/") and p.count("/") == 1)
    expected = one.load_dataset(repo.eid, rel_path)
    shutil.move(session / "alf", cache / "moved_alf")
    (session / "alf").symlink_to(cache / "moved_alf", target_is_directory=True)
    np.testing.assert_array_equal(one.load_dataset(repo.eid, rel_path), expected)
    one.close()


KILLED_EXPORT = textwrap.dedent("""
    import os, signal, sys
    from oneprov import open_store, files, tables
    from oneprov.export import one_files
    db, folder, point = sys.argv[1:4]
    if point == "writing":          # killed while the second table is being written
        write = tables.write_batches
        calls = []
        def write_and_die(batches, path, *args, **kwargs):
            calls.append(path)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            return write(batches, path, *args, **kwargs)
        tables.write_batches = write_and_die
    else:                           # killed between the two renames
        replace = os.replace
        moved = []
        def replace_and_die(src, dst):
            replace(src, dst)
            if str(dst).endswith(".pqt"):
                moved.append(dst)
                if len(moved) == 1:
                    os.kill(os.getpid(), signal.SIGKILL)
        files.os.replace = replace_and_die
    store = open_store(db)
    one_files.export_cache(store, folder, clobber=True)
""")


def _pair(folder: Path) -> tuple[set, set]:
    sessions = set(pd.read_parquet(folder / "sessions.pqt").reset_index()["id"].astype(str))
    datasets = set(pd.read_parquet(folder / "datasets.pqt").reset_index()["eid"].astype(str))
    return sessions, datasets


@pytest.mark.parametrize("point", ["writing", "renaming"])
def test_killed_export_never_leaves_a_mismatched_pair(point, tmp_path, repo):
    """An export of the cache tables killed (SIGKILL) while writing, or between the two renames: the
    folder holds the old pair (and the leftovers are removed), or, once the next reader of the folder
    completes the journal, the new pair; never a new sessions.pqt beside an old datasets.pqt."""
    db = tmp_path / "p.sqlite"
    store = open_store(db)
    store.import_cache(repo.root)
    store.close()
    folder = tmp_path / "out"
    other = make_repository(tmp_path / "other", seed=11, write_files=False).root
    folder.mkdir()
    for name in ("sessions.pqt", "datasets.pqt"):
        (folder / name).write_bytes((other / name).read_bytes())
    old = _pair(folder)
    proc = subprocess.run([sys.executable, "-c", KILLED_EXPORT, str(db), str(folder), point], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    left = sorted(p.name for p in folder.iterdir() if p.name.startswith("."))
    assert left, "the kill left nothing to clean up: it did not happen where intended"
    Folder.open(folder)                       # any reader of the folder through oneprov completes it
    assert sorted(p.name for p in folder.iterdir()) == ["datasets.pqt", "sessions.pqt"]
    new = ({str(s) for s in pd.read_parquet(repo.sessions_table).reset_index()["id"]},
           {str(e) for e in pd.read_parquet(repo.datasets_table).reset_index()["eid"]})
    assert _pair(folder) == (old if point == "writing" else new)
