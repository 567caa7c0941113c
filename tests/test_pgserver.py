"""The throwaway PostgreSQL cluster of tests/pgserver.py, reached the way oneprov reaches it:
through a ``postgresql+psycopg://`` URL and SQLAlchemy."""

from __future__ import annotations

import os

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from pgserver import PgCluster, _free_port, _process_alive, pg_cluster

pytestmark = pytest.mark.postgresql

if os.environ.get("ONEPROV_TEST_POSTGRES", "1") == "0":  # the switch tests/conftest.py honours
    pytest.skip("ONEPROV_TEST_POSTGRES=0", allow_module_level=True)


@pytest.fixture(scope="module")
def cluster():
    with pg_cluster() as pg:
        yield pg


@pytest.fixture
def engine_for():
    engines = []

    def make(url: str) -> sa.Engine:
        engines.append(sa.create_engine(url, connect_args={"connect_timeout": 10}))
        return engines[-1]

    yield make
    for engine in engines:
        engine.dispose()


def test_url_shape(cluster):
    url = sa.make_url(cluster.url)
    assert url.drivername == "postgresql+psycopg"
    assert (url.host, url.port) == ("127.0.0.1", cluster.port)
    assert (url.username, url.password, url.database) == (cluster.user, cluster.password, cluster.dbname)


def test_create_insert_read_back(cluster, engine_for):
    engine = engine_for(cluster.url)
    assert engine.dialect.driver == "psycopg"
    table = sa.Table(
        "things", sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
    )
    table.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"name": "alpha"}, {"name": "beta"}])
    with engine.connect() as conn:
        assert conn.execute(sa.select(table.c.name).order_by(table.c.id)).scalars().all() == ["alpha", "beta"]
        assert conn.execute(sa.text("SELECT current_user")).scalar() == cluster.user


def test_admin_url_is_superuser(cluster, engine_for):
    with engine_for(cluster.admin_url).connect() as conn:
        assert conn.execute(sa.text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")).scalar()


def test_create_database_is_fresh_and_owned(cluster, engine_for):
    url = cluster.create_database("test_fresh_db")
    assert sa.make_url(url).database == "test_fresh_db"
    engine = engine_for(url)
    assert sa.inspect(engine).get_table_names() == []
    with engine.begin() as conn:  # the owner role may create tables in its database's public schema
        conn.execute(sa.text("CREATE TABLE t (x int)"))
    engine.dispose()
    cluster.drop_database("test_fresh_db")

    unnamed = sa.make_url(cluster.create_database()).database
    assert unnamed.startswith("db_")
    cluster.drop_database(unnamed)


def test_wrong_password_is_an_authentication_error(cluster, engine_for):
    url = sa.make_url(cluster.url).set(password="not-the-password")
    with pytest.raises(OperationalError) as excinfo:
        engine_for(url.render_as_string(hide_password=False)).connect()
    assert isinstance(excinfo.value.orig, psycopg.OperationalError)
    assert f'password authentication failed for user "{cluster.user}"' in str(excinfo.value)


def test_unknown_database_and_closed_port_are_clear_errors(cluster, engine_for):
    url = sa.make_url(cluster.url)
    with pytest.raises(OperationalError, match='database "no_such_db" does not exist'):
        engine_for(url.set(database="no_such_db").render_as_string(hide_password=False)).connect()
    with pytest.raises(OperationalError, match="Connection refused"):
        engine_for(url.set(port=_free_port()).render_as_string(hide_password=False)).connect()


def test_stop_removes_the_cluster():
    pg = PgCluster().start()
    directory, pid = pg.dir, pg.postmaster_pid
    assert directory.is_dir() and _process_alive(pid)
    pg.stop()
    pg.stop()  # idempotent
    assert not directory.exists()
    assert not _process_alive(pid)


def test_startup_failure_is_a_clear_error():
    pg = PgCluster(settings={"max_connections": "'lots'"})
    with pytest.raises(RuntimeError, match="PostgreSQL server failed to start") as excinfo:
        pg.start()
    assert "max_connections" in str(excinfo.value)  # the server log tail is part of the message
    assert pg.dir is None  # and nothing is left behind
