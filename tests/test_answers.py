"""A client answers from the state its own tables gave each dataset, whatever else shares the database.

Each case makes the same calls through the real one-api (``one.api.One``, local mode) on the tables
a client was given and through ``oneprov.ONE`` on a database that holds other tables too, and the
answers must be the same; the load events must name the dataset records the answers came from.
"""
from __future__ import annotations

import logging
import shutil
import warnings
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from one.api import One

from oneprov import ONE
from oneprov.synthetic import REVISION, SORTING

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning",
                                        "ignore::DeprecationWarning")
SPIKES = dict(dataset="spikes.times.npy", collection=SORTING)


@pytest.fixture(autouse=True)
def quiet_one_api():
    logger = logging.getLogger("one")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


def copy_cache(repo, dest: Path) -> Path:
    return Path(shutil.copytree(repo.root, dest, ignore=shutil.ignore_patterns("provenance.sqlite*")))


def mark_critical(folder: Path, dataset_id: str) -> None:
    """Rewrite the datasets table with one dataset's QC set to CRITICAL (its metadata kept)."""
    path = folder / "datasets.pqt"
    table = pq.read_table(path)
    frame = table.to_pandas()
    frame["qc"] = frame["qc"].astype(str)
    ids = frame.index.get_level_values("id").astype(str)
    frame.loc[ids == dataset_id, "qc"] = "CRITICAL"
    frame["qc"] = pd.Categorical(frame["qc"], categories=["NOT_SET", "PASS", "WARNING", "FAIL", "CRITICAL"],
                                 ordered=True)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=True).replace_schema_metadata(table.schema.metadata), path)


def answers(client, repo) -> dict:
    """What the calls under test answer: the spikes file a load picks, and the listings of the session."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = client.load_dataset(repo.eid, **SPIKES, download_only=True)
        return {"load": Path(path).relative_to(client.eid2path(repo.eid)).as_posix(),
                "datasets": sorted(map(str, client.list_datasets(repo.eid))),
                "revisions": sorted(client.list_revisions(repo.eid, filename="spikes.times.npy")),
                "search": sorted(map(str, client.search(datasets="spikes.times.npy")))}


def loaded_record(client) -> dict:
    """The state recorded with the client's last load: the record its event names."""
    row = client.store.sql(
        "SELECT r.uuid, r.rel_path, r.qc FROM access_events e JOIN dataset_records r ON r.id = e.record_id "
        "WHERE e.run_id = :r ORDER BY e.id DESC LIMIT 1", {"r": client.run_id}).iloc[0]
    return dict(row)


def test_tables_restored_byte_for_byte_answer_as_they_did(repo, tmp_path, db_url):
    """v1 imported, then v2 (the chosen revision CRITICAL), then v1 restored: the third client's import
    is the first one again (same checksum) and it answers from v1's records, as one-api on v1 does."""
    cache = copy_cache(repo, tmp_path / "cache")
    v1 = (cache / "datasets.pqt").read_bytes()
    first = ONE(cache_dir=cache, db=db_url)
    expected_v1 = answers(One(cache_dir=cache, mode="local"), repo)
    assert answers(first, repo) == expected_v1 and expected_v1["load"].startswith(f"{SORTING}/#{REVISION}#/")
    first.close()

    mark_critical(cache, repo.revised_id)
    second = ONE(cache_dir=cache, db=db_url)
    expected_v2 = answers(One(cache_dir=cache, mode="local"), repo)
    assert expected_v2["load"] != expected_v1["load"]          # v2 makes one-api load another revision
    assert answers(second, repo) == expected_v2
    second.close()

    (cache / "datasets.pqt").write_bytes(v1)
    third = ONE(cache_dir=cache, db=db_url)
    assert third._catalog.query_id == first._catalog.query_id   # (the first import, reused)
    assert answers(third, repo) == answers(One(cache_dir=cache, mode="local"), repo) == expected_v1
    assert loaded_record(third) == {"uuid": repo.revised_id, "rel_path": expected_v1["load"], "qc": "PASS"}
    third.close()


def test_two_caches_in_one_database_each_answer_from_their_own_tables(repo, tmp_path, db_url):
    """One cache's tables mark the chosen revision CRITICAL; the other's do not. Whatever the order of
    their imports, each client answers as one-api does on its own tables, and records its own state."""
    plain, marked = copy_cache(repo, tmp_path / "plain"), copy_cache(repo, tmp_path / "marked")
    mark_critical(marked, repo.revised_id)
    expected = {folder: answers(One(cache_dir=folder, mode="local"), repo) for folder in (plain, marked)}
    assert expected[plain]["load"] != expected[marked]["load"]
    clients = {folder: ONE(cache_dir=folder, db=db_url) for folder in (plain, marked)}   # plain imported first
    again = ONE(cache_dir=plain, db=db_url)                    # and a client of it after the other import
    try:
        for folder, client in [*clients.items(), (plain, again)]:
            assert answers(client, repo) == expected[folder], folder.name
            state = loaded_record(client)
            assert state["rel_path"] == expected[folder]["load"] and state["qc"] != "CRITICAL"
        # the current state (the datasets view) is the latest import's
        current = clients[plain].store.sql("SELECT qc FROM datasets WHERE id = :i", {"i": repo.revised_id})
        assert current.qc.tolist() == ["CRITICAL"]
    finally:
        for client in (*clients.values(), again):
            client.close()
