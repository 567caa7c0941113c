"""Shared fixtures: real SQLite files on disk and a real PostgreSQL server.

Tests that take ``db_url`` run twice, on a new SQLite file and on a new PostgreSQL database of a
throwaway cluster that the test session starts (tests/pgserver.py). Set ONEPROV_TEST_POSTGRES=0 to
leave PostgreSQL out on a machine without its server binaries; CI never does.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from oneprov import open_store  # noqa: E402

WITH_POSTGRES = os.environ.get("ONEPROV_TEST_POSTGRES", "1") != "0"
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)] if WITH_POSTGRES else ["sqlite"]


@pytest.fixture(scope="session")
def pg():
    """A throwaway PostgreSQL cluster for the whole test session."""
    from pgserver import pg_cluster

    with pg_cluster() as cluster:
        yield cluster


@pytest.fixture(params=BACKENDS)
def db_url(request, tmp_path) -> str:
    """A new, empty database: a SQLite file path, or a PostgreSQL URL."""
    if request.param == "sqlite":
        return str(tmp_path / "provenance.sqlite")
    return request.getfixturevalue("pg").create_database()


@pytest.fixture
def store(db_url):
    s = open_store(db_url)
    yield s
    s.close()


@pytest.fixture(scope="session")
def repo(tmp_path_factory):
    """A small synthetic ALF repository with ONE cache tables (read-only for the tests)."""
    from oneprov.synthetic import make_repository

    return make_repository(tmp_path_factory.mktemp("repo"))


@pytest.fixture
def alyx(tmp_path, monkeypatch):
    """A test Alyx on 127.0.0.1 (tests/alyx_server.py) over a small synthetic repository, with
    one-api's saved parameters for it (data server, user, cache folder ``tmp_path/cache``) in a new $HOME."""
    from alyx_server import AlyxServer
    from oneprov.synthetic import make_repository

    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ONE_REVISION_LAST_BEFORE", raising=False)
    monkeypatch.delenv("ONEPROV_DB", raising=False)
    with AlyxServer(make_repository(tmp_path / "server")) as server:
        server.one_params(tmp_path / "cache")
        yield server
