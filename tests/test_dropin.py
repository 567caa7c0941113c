"""oneprov's ``ONE`` as a drop-in for one-api's ``One`` (local mode): what analysis code relies on
beyond the answers of ``test_one_parity``: the classes it catches, the types it gets back, file
contents by format, id forms, one-api's converters, construction, ``setup``, ``_cache`` edits,
``save_cache``, and the warnings and log records one-api users see.

Each test makes the call through the real one-api (3.6.1) where it can, on the same files.
"""
from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import uuid
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import one.alf.exceptions as one_errors
import one.params
from iblutil.io.parquet import uuid2np
from iblutil.util import Bunch
from one.alf.cache import make_parquet_db
from one.alf.io import AlfBunch
from one.alf.path import ALFPath
from one.api import One

from oneprov import ONE
from oneprov.errors import BadInputError
from oneprov.tables import iter_datasets, read_metadata, write_datasets

# make_parquet_db writes no default_revision: one-api and oneprov warn at each load ("using most recent")
pytestmark = pytest.mark.filterwarnings("ignore:No default revision")

SESSION = Path("mylab", "Subjects", "SUB_1", "2024-03-01", "001")


def _write_formats(alf: Path) -> dict[str, Path]:
    """One file per format one-api reads (and an empty one of each kind that has a reader)."""
    alf.mkdir(parents=True)
    rng = np.random.default_rng(1)
    files = {
        "npy": ("_lab_wheel.position.npy", lambda p: np.save(p, rng.random(7))),
        "npy2d": ("_lab_wheel.moves.npy", lambda p: np.save(p, rng.random((4, 2)))),
        "npz1": ("clusters.waveforms.npz", lambda p: np.savez(p, rng.random(3))),
        "npz2": ("clusters.extra.npz", lambda p: np.savez(p, a=np.arange(3), b=np.ones(2))),
        "csv1": ("trials.single.csv", lambda p: pd.DataFrame({"x": [1, 2, 3]}).to_csv(p, index=False)),
        "csv2": ("trials.table.csv", lambda p: pd.DataFrame({"x": [1, 2], "y": ["a", "b"]}).to_csv(p, index=False)),
        "tsv": ("trials.notes.tsv", lambda p: p.write_text("a\tb\n1\t2\n3\t4\n")),
        "htsv": ("trials.events.htsv", lambda p: p.write_text("onset\tduration\n0.5\t1\n")),
        "ssv": ("trials.spaced.ssv", lambda p: p.write_text("a b\n1 2\n")),
        "json": ("_lab_settings.raw.json", lambda p: p.write_text(json.dumps({"a": 1, "b": [1, 2]}))),
        "jsonable": ("_lab_log.raw.jsonable", lambda p: p.write_text('{"a": 1}\n{"a": 2}\n')),
        "yml": ("_lab_config.raw.yml", lambda p: p.write_text(yaml.safe_dump({"k": [1, 2]}))),
        "yaml": ("_lab_config.more.yaml", lambda p: p.write_text(yaml.safe_dump({"k": "v"}))),
        "pqt": ("trials.table.pqt", lambda p: pd.DataFrame({"t": np.arange(4.0)}).to_parquet(p)),
        "sparse_npz": ("spikes.matrix.sparse_npz", lambda p: p.write_bytes(b"\x00" * 8)),
        "other": ("_lab_video.raw.mp4", lambda p: p.write_bytes(b"\x00\x01")),
        "empty_npy": ("_lab_empty.values.npy", lambda p: p.touch()),
        "empty_csv": ("_lab_empty.table.csv", lambda p: p.touch()),
        "empty_json": ("_lab_empty.doc.json", lambda p: p.touch()),
    }
    out = {}
    for key, (name, write) in files.items():
        write(alf / name)
        out[key] = alf / name
    return out


@pytest.fixture(scope="module")
def formats(tmp_path_factory):
    """An ALF tree with one file per format, its tables made by one-api's ``make_parquet_db``, and
    both clients on it."""
    root = tmp_path_factory.mktemp("formats")
    files = _write_formats(root / SESSION / "alf")
    make_parquet_db(root, hash_files=True)
    ours = ONE(cache_dir=root, db=tmp_path_factory.mktemp("db") / "p.sqlite")
    yield root, files, ours, One(cache_dir=root, mode="local")
    ours.close()


def same(a, b) -> None:
    """Equal content and the same type, as analysis code would see it."""
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(b, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b)
    elif isinstance(b, pd.Series):
        pd.testing.assert_series_equal(a, b)
    elif isinstance(b, np.ndarray):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype and a.shape == b.shape
    elif isinstance(b, np.lib.npyio.NpzFile):
        assert sorted(a.files) == sorted(b.files)
        for key in b.files:
            np.testing.assert_array_equal(a[key], b[key])
    else:
        assert a == b


@pytest.mark.parametrize("key", ["npy", "npy2d", "npz1", "npz2", "csv1", "csv2", "tsv", "htsv", "ssv", "json",
                                 "jsonable", "yml", "yaml", "pqt", "sparse_npz", "other", "empty_npy", "empty_csv",
                                 "empty_json"])
def test_file_content_by_format_is_one_apis(formats, key):
    """Every format reads as one-api reads it: a single csv column as a Series, a single default npz
    array as the array, an unknown extension as its ALFPath, a 0-byte file as None."""
    root, files, ours, ref = formats
    eid = ref.path2eid(root / SESSION)
    name = files[key].name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # (sparse_npz: one-api warns that pydata sparse is missing)
        got, expected = ours.load_dataset(eid, name), ref.load_dataset(eid, name)
    same(got, expected)
    if key == "csv1":
        assert isinstance(got, pd.Series)
    if key.startswith("empty"):
        assert got is None


def test_types_returned_are_one_apis(formats):
    root, files, ours, ref = formats
    eid = ref.path2eid(root / SESSION)
    assert isinstance(ours.to_eid(str(eid)), uuid.UUID) and ours.to_eid(str(eid)) == eid
    assert isinstance(ours.path2eid(root / SESSION), uuid.UUID)
    assert isinstance(ours.eid2path(eid), ALFPath) and ours.eid2path(eid) == ref.eid2path(eid)
    wheel = ours.load_object(eid, "wheel")
    assert isinstance(wheel, AlfBunch) and type(wheel) is type(ref.load_object(eid, "wheel"))
    collection = ours.load_collection(eid, "alf", object="wheel")
    assert type(collection) is type(ref.load_collection(eid, "alf", object="wheel")) is Bunch
    paths = ours.load_collection(eid, "alf", object="wheel", download_only=True)
    assert isinstance(paths, tuple) and all(isinstance(p, ALFPath) for p in paths)
    assert ours.search(subject="nobody", details=True) == ref.search(subject="nobody", details=True) == ([], None)
    found, records = ours.search(subject="SUB_1", details=True)
    assert [type(x) for x in found] == [uuid.UUID] and isinstance(records[0], Bunch)
    _, meta = ours.load_datasets(eid, ["_lab_wheel.position"], download_only=True)
    assert isinstance(meta[0], Bunch)


def test_errors_are_caught_by_one_apis_classes(formats):
    root, files, ours, ref = formats
    eid = ref.path2eid(root / SESSION)
    for client in (ours, ref):
        with pytest.raises(one_errors.ALFObjectNotFound):
            client.load_dataset(eid, "nothing.here.npy")
        with pytest.raises(one_errors.ALFObjectNotFound):
            client.load_object(eid, "nothing")
        with pytest.raises(one_errors.ALFMultipleObjectsFound):
            client.load_dataset(eid, "_lab_config.*")
        with pytest.raises(one_errors.ALFError):
            client.load_object(str(uuid.UUID(int=5, version=4)), "wheel")
    with pytest.raises(one_errors.ALFObjectNotFound) as caught:
        ours.load_dataset(eid, "nothing.here.npy")
    assert one_errors.ALFObjectNotFound.explanation in str(caught.value)   # one-api's message form


def test_glob_classes_and_wildcards_match_as_one_api(formats):
    root, files, ours, ref = formats
    eid = ref.path2eid(root / SESSION)
    for pattern in ["*", "_lab_*", "trials.*", "trials.[nt]*", "trials.[!t]*", "_lab_wheel.?o*", "*.npz",
                    "*config*", "clusters.*.npz", "[ct]*.csv"]:
        assert ours.list_datasets(eid, filename=pattern) == ref.list_datasets(eid, filename=pattern), pattern
    with pytest.warns(UserWarning, match="Wildcards should not be used with relative path"):
        ours.load_dataset(eid, "alf/_lab_wheel.pos*.npy")


def test_session_and_dataset_id_forms(formats):
    root, files, ours, ref = formats
    eid = ref.path2eid(root / SESSION)
    expected = ours.load_dataset(eid, "_lab_wheel.position.npy")
    for form in (eid, str(eid), "2024-03-01_001_SUB_1", "SUB_1/2024-03-01/001", root / SESSION,
                 {"subject": "SUB_1", "date": "2024-03-01", "sequence": 1},
                 f"https://alyx.example.org/sessions/{eid}"):
        np.testing.assert_array_equal(ours.load_dataset(form, "_lab_wheel.position.npy"), expected)
    did = ours.list_datasets(eid, filename="_lab_wheel.position.npy", details=True).index[0]
    did = uuid.UUID(str(did[-1] if isinstance(did, tuple) else did))
    pair = uuid2np([did])            # the legacy int64 pair of one-api's older tables
    for form in (did, str(did), pair):
        np.testing.assert_array_equal(ours.load_dataset_from_id(form), expected)
    np.testing.assert_array_equal(ref.load_dataset_from_id(pair), expected)
    for client in (ours, ref):       # one-api's UUID check: lowercase text only
        with pytest.raises(ValueError, match="Invalid experiment ID"):
            client.load_dataset(str(eid).upper(), "_lab_wheel.position.npy")
    with pytest.raises(ValueError):
        ours.eid2path("fakeid")
    with pytest.raises(BadInputError):
        ours.load_dataset_from_id("not-a-uuid")


def test_one_api_converters(formats):
    """one-api's ``ConversionMixin`` methods work on oneprov's client, with oneprov's catalog under them."""
    root, files, ours, ref = formats
    eid = ref.path2eid(root / SESSION)
    ref_dict = {"subject": "SUB_1", "date": "2024-03-01", "sequence": "001"}
    for method, args in [("eid2ref", (eid,)), ("eid2ref", (str(eid),)), ("ref2eid", ("2024-03-01_001_SUB_1",)),
                         ("path2ref", (root / SESSION,)),
                         ("is_exp_ref", ("2024-03-01_001_SUB_1",)), ("dict2ref", (ref_dict,)),
                         ("ref2dict", ("2024-03-01_001_SUB_1",)), ("path2eid", (root / SESSION / "alf",)),
                         ("eid2path", ([eid, eid],)), ("eid2path", (str(uuid.UUID(int=3, version=4)),)),
                         ("ref2path", ("2024-03-01_001_SUB_1",)), ("ref2path", (["2024-03-01_001_SUB_1"],))]:
        assert getattr(ours, method)(*args) == getattr(ref, method)(*args), method
    for client in (ours, ref):        # one-api asserts that the ref names a session
        with pytest.raises(AssertionError, match="session not found"):
            client.ref2eid("2024-03-01_001_NOBODY")
    assert ours.eid2path(eid, query_type="local") == ref.eid2path(eid)   # (OneAlyx's argument)
    record = ours.path2record(files["npy"])
    assert isinstance(record, pd.Series) and record["rel_path"] == "alf/_lab_wheel.position.npy"
    assert ours.record2path(record) == ref.record2path(ref.path2record(files["npy"]))
    did = ours.list_datasets(eid, filename="_lab_wheel.position.npy", details=True).index[0]
    url = f"https://alyx.example.org/{SESSION.as_posix()}/alf/_lab_wheel.position.{did}.npy"
    assert ours.path2record(url)["rel_path"] == ref.path2record(url)["rel_path"] == "alf/_lab_wheel.position.npy"
    assert ours.path2record(url.replace(str(did), str(uuid.UUID(int=9, version=4)))) is None
    session = ours.path2record(root / SESSION)
    assert session.name == eid and session["subject"] == "SUB_1"
    assert ours.path2record(root / "otherlab" / SESSION.relative_to("mylab")) is None   # another lab


def test_one_api_fixture_with_repeated_ids(tmp_path):
    """one-api's own test tables (its fixture, read from the installed wheel) give the same lists."""
    fixture = Path(one.params.__file__).parent / "tests" / "fixtures"
    cache = tmp_path / "cache"
    cache.mkdir()
    for name in ("sessions.pqt", "datasets.pqt"):
        shutil.copy(fixture / name, cache)
    ours = ONE(cache_dir=cache, db=tmp_path / "p.sqlite")
    ref = One(cache_dir=cache, mode="local")
    assert sorted(map(str, ours.search())) == sorted(map(str, ref.search()))
    compared = 0
    for eid in ref.search():
        expected = ref.list_datasets(eid)
        if isinstance(expected, pd.DataFrame):   # one-api: a session without datasets lists an empty table
            assert expected.empty and ours.list_datasets(eid) == []
            continue
        assert sorted(ours.list_datasets(eid)) == sorted(expected), eid
        assert sorted(ours.list_collections(eid)) == sorted(ref.list_collections(eid)), eid
        compared += 1
    assert compared >= 5
    # One UUID under alf/ and alf/ks2/ (both rows kept, as one-api keeps them); loaded twice, it is
    # listed once in the loaded-ids CSV, as one-api lists it.
    datasets = ref._cache["datasets"].reset_index()
    (eid, did), = datasets.loc[datasets["id"].duplicated(), ["eid", "id"]].itertuples(index=False)
    assert "alf/ks2" in ours.list_collections(eid) and sorted(ours.list_collections(eid)) == \
        sorted(ref.list_collections(eid))
    for rel_path, size in datasets.loc[datasets["id"] == did, ["rel_path", "file_size"]].itertuples(index=False):
        path = ref.eid2path(eid) / rel_path
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            f.truncate(int(size))                 # the recorded size (no hash recorded)
    ids = {}
    for client in (ours, ref):
        client.record_loaded = True
        for collection in ("alf", "alf/ks2"):
            assert client.load_dataset(eid, "spikes.clusters.npy", collection=collection, download_only=True)
        ids[client] = [str(i) for i in client.save_loaded_ids(path=tmp_path / f"{id(client)}.csv")[0]] \
            if client is ours else [str(i) for i in client.save_loaded_ids()[0]]
    assert ids[ours] == ids[ref] == [str(did)]
    ours.close()


def test_cache_edits_take_effect_and_are_recorded(tmp_path, repo):
    """Editing ``one._cache`` (as analysis code does, e.g. to mark a revision default) changes the
    answers that follow, and the edit is recorded as a query of its own."""
    db = tmp_path / "p.sqlite"
    ours = ONE(cache_dir=repo.root, db=db)
    datasets = ours._cache["datasets"]
    assert isinstance(datasets.index, pd.MultiIndex) and list(datasets.index.names) == ["eid", "id"]
    before = ours.list_datasets(repo.eid)
    ours._cache["datasets"] = datasets[~datasets["rel_path"].str.contains("wheel")]
    after = ours.list_datasets(repo.eid)
    assert any("wheel" in d for d in before) and not any("wheel" in d for d in after)
    ours.close()
    with sqlite3.connect(db) as conn:
        (source,), = conn.execute("SELECT source FROM queries WHERE method = 'edit_cache'")
    assert source.startswith("in-memory edit of query ")


def test_duplicate_session_in_cache_is_one_apis_error(tmp_path, repo):
    ours = ONE(cache_dir=repo.root, db=tmp_path / "p.sqlite")
    sessions = ours._cache["sessions"]
    ours._cache["sessions"] = pd.concat([sessions, sessions.iloc[:1]])
    with pytest.raises(one_errors.ALFMultipleObjectsFound, match="duplicate session id"):
        ours.get_details(repo.eid)
    ours._cache["sessions"] = sessions                     # undone: answers again
    assert ours.get_details(repo.eid).name == uuid.UUID(repo.eid)
    ours.close()


def test_tables_folder_with_datasets_only(tmp_path, repo):
    """As for one-api, ``sessions.pqt`` is optional: no sessions to search, datasets still listed."""
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(repo.datasets_table, cache)
    ours = ONE(cache_dir=cache, db=tmp_path / "p.sqlite")
    ref = One(cache_dir=cache, mode="local")
    assert ours.search() == ref.search() == []
    assert ours.list_datasets(repo.eid) == ref.list_datasets(repo.eid)
    assert sorted(ours.list_datasets()) == sorted(ref.list_datasets())
    assert ours.eid2path(repo.eid) is None


def test_missing_id_column_is_a_key_error_naming_the_file(tmp_path, repo):
    cache = tmp_path / "cache"
    cache.mkdir()
    pd.read_parquet(repo.datasets_table).reset_index().drop(columns=["eid"]).to_parquet(cache / "datasets.pqt")
    with pytest.raises(KeyError) as caught:
        ONE(cache_dir=cache, db=tmp_path / "p.sqlite")
    assert isinstance(caught.value, BadInputError)
    assert str(caught.value).startswith(str(cache / "datasets.pqt")) and "'eid'" in str(caught.value)


def test_construction_defaults_follow_one_api(tmp_path, monkeypatch, repo):
    """``ONE()`` with no cache_dir uses one-api's default cache folder (its params); remote-only
    unknown modes are refused as one-api refuses them; an Alyx that cannot be reached means offline."""
    monkeypatch.setenv("HOME", str(tmp_path))         # no one-api params of this machine's user
    monkeypatch.setattr(one.params, "CACHE_DIR_DEFAULT", str(tmp_path / "Downloads" / "ONE"))
    default = Path(one.params.get_cache_dir())
    assert default == tmp_path / "Downloads" / "ONE"
    shutil.copytree(repo.root, default, dirs_exist_ok=True)
    ours = ONE(db=tmp_path / "p.sqlite")
    assert ours.cache_dir == default and repr(ours) == f"One (offline, {default})"
    assert ours.search() and ours.offline
    with pytest.raises(ValueError):
        ONE(cache_dir=repo.root, mode="sideways", db=tmp_path / "q.sqlite")
    with pytest.warns(UserWarning, match="cannot reach"):   # (nothing listens there: offline, from the tables)
        offline = ONE(cache_dir=repo.root, base_url="http://127.0.0.1:9", username="u", password="p", silent=True,
                      db=tmp_path / "q.sqlite")
    assert offline.mode == "local" and offline.search()
    with pytest.raises(NotImplementedError, match="clobber=False"):
        ours.load_cache(clobber=False)
    ours.close()


def test_setup_builds_tables_as_one_api(tmp_path):
    root = tmp_path / "tree"
    _write_formats(root / SESSION / "alf")
    ours = ONE.setup(cache_dir=root, silent=True)
    assert (root / "sessions.pqt").is_file() and (root / "datasets.pqt").is_file()
    assert ours.search() == One(cache_dir=root, mode="local").search()
    ours.close()


def test_save_cache_as_one_api(tmp_path, repo):
    """Nothing is written without a change (or ``clobber``); after an edit the tables are written with
    their imported ``date_created`` and a new ``date_modified``, and one-api reads them."""
    ours = ONE(cache_dir=repo.root, db=tmp_path / "p.sqlite")
    out = tmp_path / "out"
    out.mkdir()
    assert ours.save_cache(out) == {} and not any(out.iterdir())
    written = ours.save_cache(out, clobber=True)
    assert sorted(p.name for p in written.values()) == ["datasets.pqt", "sessions.pqt"]
    (out / "datasets.pqt").unlink()
    assert ours.save_cache(out) == {}            # saved already, unchanged since
    datasets = ours._cache["datasets"]
    ours._cache["datasets"] = datasets.iloc[:-1]
    assert ours.save_cache(out)
    ref = One(cache_dir=out, mode="local")
    assert len(ref._cache["datasets"]) == len(datasets) - 1
    original = ours._cache["_meta"]["raw"]["datasets"]
    saved = ref._cache["_meta"]["raw"]["datasets"]
    assert saved["date_created"] == original["date_created"] and saved.get("date_modified")
    ours.close()


def test_warnings_name_the_callers_line_and_logs_go_to_one_api(formats, caplog):
    root, files, ours, ref = formats
    eid = ref.path2eid(root / SESSION)
    with pytest.warns(UserWarning) as caught:
        ours.load_dataset(eid, "alf/_lab_wheel.pos*.npy")
    assert caught[0].filename == __file__
    unknown = str(uuid.UUID(int=77, version=4))
    with caplog.at_level(logging.WARNING, logger="one.api"):
        data, meta = ours.load_datasets(unknown, ["_lab_wheel.position"], assert_present=False)
    assert data is None and len(meta) == 0
    assert [r.name for r in caplog.records] == ["one.api"] and unknown in caplog.records[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="one.api"):
        ours.load_datasets(eid, ["_lab_wheel.position", "nothing.here"], assert_present=False)
    assert "not in the cache: nothing.here" in caplog.records[0].getMessage()


def test_unknown_session_lists_nothing(formats):
    """Deliberate difference (README): [] for a session the tables do not have, where one-api gives an
    empty DataFrame for ``list_datasets`` (and [] for the others)."""
    root, files, ours, ref = formats
    unknown = str(uuid.UUID(int=78, version=4))
    for method in ("list_datasets", "list_collections", "list_revisions"):
        assert getattr(ours, method)(unknown) == [], method
        assert len(getattr(ref, method)(unknown)) == 0, method
    assert isinstance(ref.list_datasets(unknown), pd.DataFrame)


def test_no_future_warnings_from_common_calls(formats):
    """pandas/numpy deprecations raised inside the client would reach every user's output."""
    root, files, ours, ref = formats
    eid = ref.path2eid(root / SESSION)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        ours.search(subject="SUB_1", details=True)
        ours.list_datasets(eid, details=True)
        ours.load_object(eid, "wheel")
        ours.load_datasets(eid, ["_lab_wheel.position", "_lab_wheel.moves"])
        ours.get_details(eid, full=True)
        ours._cache["datasets"]


def test_smaller_points_as_one_api(formats, tmp_path, monkeypatch, repo):
    root, files, ours, ref = formats
    eid = ref.path2eid(root / SESSION)
    elsewhere = root / "mylab" / "Subjects" / "SUB_1" / "2030-01-01" / "001"    # not in the tables
    for method in ("list_datasets", "list_collections", "list_revisions"):
        assert len(getattr(ours, method)(elsewhere)) == len(getattr(ref, method)(elsewhere)) == 0, method
    for client in (ours, ref):
        with pytest.raises(ValueError, match="only str or only dicts"):
            client.load_datasets(eid, ["_lab_wheel.position", {"object": "wheel", "attribute": "moves"}])
        with pytest.raises(one_errors.ALFError, match="No default revisions"):   # make_parquet_db: no column
            client.list_datasets(eid, default_revisions_only=True)
    # tables_dir without cache_dir: the data stay in one-api's default cache folder
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(one.params, "CACHE_DIR_DEFAULT", str(tmp_path / "ONE"))
    client = ONE(tables_dir=repo.root, silent=True, db=tmp_path / "p.sqlite")
    assert client.cache_dir == tmp_path / "ONE" and client.search() == One(cache_dir=repo.root).search()
    client.close()


@pytest.mark.parametrize("import_size", ["small", "large"])
def test_exact_repeat_of_a_row_is_kept_once_with_a_warning(tmp_path, repo, import_size, monkeypatch):
    """Deliberate difference (README): one-api keeps a row repeated exactly (same dataset id, session
    and rel_path) twice, and ``load_dataset_from_id`` then raises ALFMultipleObjectsFound; oneprov
    keeps the first, warns naming the id, and the dataset loads. Also in a large import, whose
    check pass finds the repeat in a later batch than the first row."""
    if import_size == "large":
        from oneprov.store import ingest
        monkeypatch.setattr(ingest, "SMALL_ROWS", 0)
    cache = tmp_path / "cache"
    shutil.copytree(repo.root, cache)
    datasets = pd.concat(iter_datasets(cache / "datasets.pqt"), ignore_index=True)
    repeated = pd.concat([datasets, datasets[datasets["id"] == repo.unrevised_id]], ignore_index=True)
    write_datasets(repeated, cache / "datasets.pqt", read_metadata(repo.datasets_table))
    with pytest.warns(UserWarning, match=f"repeat the dataset id.*{repo.unrevised_id}"):
        ours = ONE(cache_dir=cache, db=tmp_path / "p.sqlite")
    assert ours.load_dataset_from_id(repo.unrevised_id, download_only=True).is_file()
    imported = ours.store.sql("SELECT n_datasets FROM queries WHERE method = 'import_cache'")
    assert imported.n_datasets.tolist() == [len(datasets)]
    with pytest.raises(one_errors.ALFMultipleObjectsFound):
        One(cache_dir=cache, mode="local").load_dataset_from_id(repo.unrevised_id, download_only=True)
    ours.close()
