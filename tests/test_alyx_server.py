"""The test Alyx (tests/alyx_server.py) checked by the real client: unmodified one-api ``OneAlyx``
runs the seed's examples against it, so what oneprov's remote mode is compared with is one-api's
behaviour on an Alyx that answers as Alyx does."""
from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pandas as pd
import requests
import one.api as one_api_module
from one.api import OneAlyx

from oneprov.synthetic import REVISION, SORTING


def one_api(alyx, tmp_path, **kwargs) -> OneAlyx:
    return OneAlyx(base_url=alyx.url, username="test_user", password="TapetesBloc18", silent=True,
                   cache_dir=tmp_path / "cache", **kwargs)


def session_ref(alyx, eid) -> str:
    s = alyx.sessions.loc[eid]
    return f"{s['subject']}/{s['date']}/{int(s['number']):03d}"


def test_the_seed_example_runs_on_one_api(alyx, tmp_path):
    one = one_api(alyx, tmp_path)
    one.record_loaded = True
    eid = alyx.repo.eid
    trials = one.load_object(session_ref(alyx, eid), "trials")
    assert set(trials) >= {"intervals", "choice", "feedbackType"}
    expected = np.load(alyx.repo.dataset_path(alyx.datasets.index[
        (alyx.datasets["eid"] == eid) & (alyx.datasets["rel_path"] == "alf/trials.intervals.npy")][0]))
    assert np.array_equal(trials["intervals"], expected)
    other = alyx.repo.eids[1]
    description = one.load_dataset(session_ref(alyx, other), "probes.description")
    assert description is not None
    ids, path = one.save_loaded_ids(clear_list=False)
    assert path.exists() and len(pd.read_csv(path)) == len(ids) > 3
    sessions, path = one.save_loaded_ids(sessions_only=True)
    assert {str(e) for e in sessions} == {eid, other}
    # downloads land in the cache folder layout, without the UUID in the name
    local = one.eid2path(eid) / "alf" / "trials.intervals.npy"
    assert local.exists()
    assert not list((tmp_path / "cache").rglob(f"*{alyx.repo.revised_id}*"))


def test_one_api_searches_lists_and_pages(alyx, tmp_path):
    one = one_api(alyx, tmp_path)
    subject = alyx.sessions["subject"].iloc[0]
    eids = one.search(subject=subject.upper()[:3])   # case-insensitive, partial
    assert {str(e) for e in eids} == set(alyx.sessions.index[alyx.sessions["subject"].str.contains(subject[:3])])
    listed = one.list_datasets(alyx.repo.eid)
    assert f"{SORTING}/#{REVISION}#/spikes.times.npy" in listed
    alyx.page_size = 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        paged = one.search(lab="lab")
    assert len(paged) == len(alyx.sessions) and len({str(e) for e in paged}) == len(alyx.sessions)
    pages = [p for m, p in alyx.requests if p.startswith("/sessions?") and "offset=" in p]
    assert pages, "the later pages are fetched by limit/offset"


def test_one_api_chooses_the_revision_and_cutoff(alyx, tmp_path, monkeypatch):
    one = one_api(alyx, tmp_path)
    path = one.load_dataset(alyx.repo.eid, "spikes.times.npy", collection=SORTING, download_only=True)
    assert f"#{REVISION}#" in path.as_posix()
    monkeypatch.setattr(one_api_module, "REVISION_LAST_BEFORE", "2024-01-01")   # (one-api reads the variable at import)
    one = one_api(alyx, tmp_path)   # (one-api 3.6.1 on pandas 3 cannot list a session twice: see README)
    path = one.load_dataset(alyx.repo.eid, "spikes.times.npy", collection=SORTING, download_only=True)
    assert "#" not in path.as_posix()


def test_one_api_saves_the_access_tables(alyx, tmp_path):
    one = one_api(alyx, tmp_path)
    one.list_datasets(alyx.repo.eid)
    one.save_cache()
    saved = pd.read_parquet(tmp_path / "cache" / "datasets.pqt")
    listed = alyx.datasets.index[alyx.datasets["eid"] == alyx.repo.eid]
    assert set(saved.reset_index()["id"].astype(str)) == {d for d in listed if alyx.on_server(d)}


def test_one_api_loads_the_server_cache_tables(alyx, tmp_path):
    one = one_api(alyx, tmp_path)
    one.load_cache(clobber=True)
    assert len(one._cache["datasets"]) == len(alyx.datasets)
    assert (tmp_path / "cache" / "datasets.pqt").exists()


def test_faults_are_served(alyx, tmp_path):
    token = requests.post(alyx.url + "/auth-token", data=alyx.credentials).json()["token"]
    auth = {"Authorization": f"Token {token}"}
    alyx.fault("/sessions", "status", status=500)
    assert requests.get(alyx.url + "/sessions", headers=auth).status_code == 500
    assert requests.get(alyx.url + "/sessions", headers=auth).status_code == 200
    url = alyx.file_url(alyx.repo.revised_id)
    good = requests.get(url.replace("#", "%23")).content
    assert hashlib.md5(good).hexdigest() == alyx.datasets.loc[alyx.repo.revised_id, "hash"]
    alyx.fault("/data/*", "corrupt")
    assert requests.get(url.replace("#", "%23")).content != good
    assert requests.get(alyx.file_url(alyx.repo.missing_id)).status_code == 404
    alyx.fault("/sessions", "expire_token")
    answer = requests.get(alyx.url + "/sessions", headers=auth)
    assert answer.status_code == 403 and "Invalid token." in answer.text
    assert requests.post(alyx.url + "/auth-token", data={"username": "test_user", "password": "x"}).status_code == 400
