"""The SQL revision choice (oneprov.revisions) against ONE's own rules.

ONE picks the revision of a dataset in pandas: ``one.util.filter_datasets`` keeps ``qc <= FAIL`` (by
default) and then ``one.util.filter_revision_last_before`` keeps one row per dataset. oneprov does the
same in one SQL statement. The property test below generates random datasets tables and checks that
both choose the same rows, calling the REAL one-api functions as the reference; the example tests
after it document the rules one at a time (see ONE-REFERENCE.md, "Revisions and QC").

PostgreSQL runs use a database whose default collation is ICU ``en-US`` (the test cluster's own
default is ``C``, which would hide a missing ``COLLATE "C"``): revisions must still compare
byte-wise, as Python compares them.
"""
from __future__ import annotations

import uuid
import warnings
from datetime import datetime

import pandas as pd
import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from one.alf import exceptions as alferr
from one.alf.cache import QC_TYPE
from one.alf.path import rel_path_parts
from one.util import filter_datasets, filter_revision_last_before

from oneprov.store import revisions
from oneprov.alf import split_rel_path
from oneprov.store.engine import create_engine
from oneprov.store.migrate import upgrade
from oneprov.store.schema import dataset_records, queries

QC_NAMES = ["NOT_SET", "PASS", "WARNING", "FAIL", "CRITICAL"]
#: Revisions that exercise plain string comparison: '' (unrevised) sorts first, digits before upper
#: case before lower case ('Z' < 'a', 'V2' < 'v1'), a prefix before its extensions
#: ('2021-06-30' < '2021-06-30_b' < '2021-06-30a'), and a non-ASCII one after everything ASCII.
REVISIONS = ["", "2020-01-01", "2021-06-30", "2021-06-30_b", "2021-06-30a", "2023-12-31",
             "v1", "V2", "a", "Z", "é"]
#: Cutoffs: any revision, and strings that fall between them.
CUTOFFS = REVISIONS + ["2019-12-31", "2021-01-01", "2021-06-30 ", "2021-06-300", "2022-02-02",
                       "2099-01-01", "0", "V", "b", "zz"]
COLLECTIONS = ["", "alf", "alf/probe00", "raw_ephys_data"]
NAMES = ["trials.table.pqt", "spikes.times.npy", "clusters.metrics.pqt"]
T0 = datetime(2024, 1, 1)


# --- databases ---------------------------------------------------------------------------------

def _icu_database(pg) -> str:
    """A new database of the test cluster whose default collation is ICU en-US (not byte-wise)."""
    name = f"icu_{uuid.uuid4().hex[:12]}"
    with pg.admin_connection() as conn:
        conn.execute(f"CREATE DATABASE {name} OWNER {pg.user} TEMPLATE template0 "
                     "LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.utf8'")
    return pg.url_for(name)


@pytest.fixture
def engine(db_url, request):
    """A migrated, empty database on each back end (PostgreSQL: with a hostile collation)."""
    if "://" in db_url:
        db_url = _icu_database(request.getfixturevalue("pg"))
    eng = create_engine(db_url)
    upgrade(eng)
    yield eng
    eng.dispose()


def a_query(conn) -> int:
    """A complete query to credit the records with (the same one within a transaction)."""
    found = conn.execute(sa.select(queries.c.id).where(queries.c.method == "test")).scalar()
    if found is None:
        found = conn.execute(queries.insert().values(method="test", started_at=T0, completed_at=T0)
                             .returning(queries.c.id)).scalar_one()
    return found


def record(conn, uuid_: str, session: str, rel_path: str, qc: str, default, **extra) -> int:
    """Insert one dataset record; return its id."""
    collection, revision, name = split_rel_path(rel_path)
    return conn.execute(dataset_records.insert().values(
        uuid=uuid_, session_uuid=session, rel_path=rel_path, collection=collection, revision=revision, name=name,
        exists=True, qc=qc, default_revision=default, query_id=a_query(conn), first_seen_at=T0, **extra)
        .returning(dataset_records.c.id)).scalar_one()


def insert(conn, session: str, rows) -> list[int]:
    """Insert ``(rel_path, qc, default_revision[, extra columns])`` rows of one session, each a new
    dataset; return their record ids."""
    return [record(conn, str(uuid.uuid4()), session, *row[:3], **(row[3] if len(row) > 3 else {})) for row in rows]


# --- the reference: one-api itself ----------------------------------------------------------------

def one_choice(rows, cutoff, qc="FAIL", ignore_qc_not_set=False, default_column=True) -> set[tuple[str, str]]:
    """``{(dataset id, revision)}`` that one-api chooses among the rows of ONE session.

    ``rows`` are ``(id, rel_path, qc, default_revision)``; without ``default_column`` the table has no
    ``default_revision`` column (as in old cache tables). Raises ONE's ALFMultipleRevisionsFound.
    """
    frame = pd.DataFrame({
        "rel_path": [r[1] for r in rows],
        "qc": pd.Categorical([r[2] for r in rows], dtype=QC_TYPE),  # ONE's ordered QC categorical
        **({"default_revision": [bool(r[3]) for r in rows]} if default_column else {}),
    }, index=pd.Index([r[0] for r in rows], name="id"))
    with warnings.catch_warnings():
        # ALFWarning: "no default revision, using most recent" (expected, part of the rules).
        # Pandas4Warning: one-api 3.6.1 sets the deprecated option 'mode.chained_assignment'.
        warnings.simplefilter("ignore")
        # ONE's QC filter, from filter_datasets itself (no path filter given: every row matches it;
        # revision_last_before=False and assert_unique=False make it return just after the QC filter).
        assert len(filter_datasets(frame, qc="CRITICAL", revision_last_before=False, assert_unique=False)) == len(frame)
        match = filter_datasets(frame, qc=qc, ignore_qc_not_set=ignore_qc_not_set,
                                revision_last_before=False, assert_unique=False)
        if match.empty:  # filter_datasets returns early on no match; the groupby below would fail
            return set()
        # A copy: filter_revision_last_before adds a 'revision' column in place.
        chosen = filter_revision_last_before(match.copy(), revision=cutoff, assert_unique=True)
    return set(zip(chosen.index, chosen["revision"]))


def sql_choice(conn, cutoff, sessions=None, session=None, **kwargs) -> set[tuple[str, str]]:
    """oneprov's choice: of all sessions, of ``sessions`` (a WHERE clause), or of ``session`` (the
    statement compiled once with a bound session id, Store.datasets_last_before(eid=...))."""
    where = [] if sessions is None else [dataset_records.c.session_uuid.in_(sessions)]
    frame = revisions.last_before(conn, cutoff, where=where, session=session, **kwargs)
    assert frame.columns.tolist() == revisions.COLUMNS
    return set(zip(frame["dataset_uuid"], frame["revision"]))


# --- property: SQL == one-api on random tables ------------------------------------------------------

@st.composite
def tables(draw):
    """Sessions -> rows ``(id, rel_path, qc, default_revision as stored)``, plus the query."""
    counter = iter(range(1, 10**6))
    default_column = draw(st.booleans())
    sessions = draw(st.lists(st.uuids().map(str), min_size=1, max_size=3, unique=True))
    table = {}
    for session in sessions:
        groups = draw(st.lists(st.tuples(st.sampled_from(COLLECTIONS), st.sampled_from(NAMES)),
                               min_size=1, max_size=4, unique=True))
        rows = []
        for collection, name in groups:
            revs = draw(st.lists(st.sampled_from(REVISIONS), min_size=1, max_size=5, unique=True))
            if default_column:
                # Mostly well-formed tables (one default or none), sometimes several defaults.
                mode = draw(st.sampled_from(["one", "one", "none", "several", "any"]))
                flagged = draw(st.integers(0, len(revs) - 1))
                if mode == "any":
                    flags = [draw(st.booleans()) for _ in revs]
                else:  # "several": every revision flagged (an error when there are two or more)
                    flags = [mode == "several" or (mode == "one" and i == flagged) for i in range(len(revs))]
            else:
                # No column in ONE's table <=> NULL (the tables did not say) or False in the store.
                flags = [draw(st.sampled_from([None, False])) for _ in revs]
            for rev, flag in zip(revs, flags):
                folder = f"#{rev}#/" if rev else ""
                rel_path = f"{collection}/{folder}{name}" if collection else f"{folder}{name}"
                rows.append((str(uuid.UUID(int=next(counter))), rel_path,
                             draw(st.sampled_from(QC_NAMES)), flag))
        table[session] = rows
    query = {
        "cutoff": draw(st.sampled_from(CUTOFFS)) if draw(st.booleans()) else None,
        "qc": draw(st.just("FAIL") | st.sampled_from(QC_NAMES) | st.sampled_from([0, 10, 30, 40, 50])),
        "ignore_qc_not_set": draw(st.booleans()),
    }
    return table, default_column, query


def outcome(call):
    """``('ok', result)`` or ``('raised', None)`` for ALFMultipleRevisionsFound (ONE's or ours)."""
    try:
        return "ok", call()
    except (alferr.ALFMultipleRevisionsFound, revisions.ALFMultipleRevisionsFound):
        return "raised", None


def test_sql_choice_agrees_with_one_api(engine):
    examples = 300 if engine.dialect.name == "sqlite" else 120

    @settings(max_examples=examples, deadline=None, database=None)
    @given(case=tables())
    def check(case):
        table, default_column, query = case
        cutoff = query["cutoff"]
        kwargs = {"qc": query["qc"], "ignore_qc_not_set": query["ignore_qc_not_set"]}
        with engine.connect() as conn:
            trans = conn.begin()  # rolled back at the end: every example starts from an empty table
            try:
                assert conn.execute(sa.select(sa.func.count()).select_from(dataset_records)).scalar() == 0
                for session, rows in table.items():
                    for id_, rel_path, qc, flag in rows:
                        # our parser and ONE's agree on the revision (else the comparison is moot)
                        assert split_rel_path(rel_path)[1] == (rel_path_parts(rel_path)[1] or "")
                        record(conn, id_, session, rel_path, qc, flag)
                union, any_raised = set(), False
                for session, rows in table.items():
                    # one-api groups by rel_path only; ONE applies it to one session at a time.
                    expected = outcome(lambda: one_choice(rows, cutoff, default_column=default_column, **kwargs))
                    got = outcome(lambda: sql_choice(conn, cutoff, sessions=[session], **kwargs))
                    assert got == expected, (session, rows)
                    assert outcome(lambda: sql_choice(conn, cutoff, session=session, **kwargs)) == expected
                    any_raised |= expected[0] == "raised"
                    union |= expected[1] or set()
                    if expected[0] == "raised":
                        assert cutoff is None  # several defaults only matter when no revision is asked
                expected_all = ("raised", None) if any_raised else ("ok", union)
                assert outcome(lambda: sql_choice(conn, cutoff, **kwargs)) == expected_all
            finally:
                trans.rollback()

    check()


# --- the rules, one at a time ------------------------------------------------------------------

SESSION = "01234567-89ab-cdef-0123-456789abcdef"


def choose(engine, rows, revision=None, **kwargs) -> list[str]:
    """Insert ``rows`` as one session, return the rel_paths oneprov chooses (checked against ONE)."""
    with engine.connect() as conn:
        trans = conn.begin()
        try:
            ids = insert(conn, SESSION, rows)
            frame = revisions.last_before(conn, revision, **kwargs)
            got = sorted(frame["rel_path"])
            by_id = {i: r[0] for i, r in zip(ids, rows)}
            reference = one_choice([(i, *r) for i, r in zip(ids, rows)], revision,
                                   default_column=any(r[2] is not None for r in rows), **kwargs)
            assert got == sorted(by_id[i] for i, _ in reference), "one-api chooses otherwise"
            return got
        finally:
            trans.rollback()


def test_default_revision_is_chosen_when_flagged(engine):
    rows = [("alf/trials.table.pqt", "PASS", False),
            ("alf/#2020-01-01#/trials.table.pqt", "PASS", True),
            ("alf/#2021-01-01#/trials.table.pqt", "PASS", False)]
    assert choose(engine, rows) == ["alf/#2020-01-01#/trials.table.pqt"]


def test_greatest_revision_when_none_is_flagged(engine):
    for flag in (False, None):  # None: the tables did not say
        rows = [("alf/trials.table.pqt", "PASS", flag),
                ("alf/#2021-01-01#/trials.table.pqt", "PASS", flag),
                ("alf/#2020-01-01#/trials.table.pqt", "PASS", flag)]
        assert choose(engine, rows) == ["alf/#2021-01-01#/trials.table.pqt"]


def test_a_single_row_is_taken_as_is(engine):
    assert choose(engine, [("alf/#2020-01-01#/trials.table.pqt", "PASS", False)]) == [
        "alf/#2020-01-01#/trials.table.pqt"]


def test_cutoff_picks_the_greatest_revision_up_to_it_inclusive(engine):
    rows = [("alf/trials.table.pqt", "PASS", False),
            ("alf/#2020-01-01#/trials.table.pqt", "PASS", False),
            ("alf/#2021-01-01#/trials.table.pqt", "PASS", True),
            ("alf/#2022-01-01#/trials.table.pqt", "PASS", False)]
    assert choose(engine, rows, "2021-01-01") == ["alf/#2021-01-01#/trials.table.pqt"]  # inclusive
    assert choose(engine, rows, "2021-12-31") == ["alf/#2021-01-01#/trials.table.pqt"]
    assert choose(engine, rows, "2020-12-31") == ["alf/#2020-01-01#/trials.table.pqt"]
    # With a cutoff the default flag plays no part.
    assert choose(engine, rows, "2099-01-01") == ["alf/#2022-01-01#/trials.table.pqt"]


def test_the_unrevised_file_is_a_fallback_candidate(engine):
    rows = [("alf/trials.table.pqt", "PASS", False),
            ("alf/#2020-01-01#/trials.table.pqt", "PASS", True)]
    assert choose(engine, rows, "2019-06-01") == ["alf/trials.table.pqt"]
    assert choose(engine, rows, "") == ["alf/trials.table.pqt"]  # '' asks for the unrevised file


def test_nothing_when_there_is_no_candidate(engine):
    rows = [("alf/#2020-01-01#/trials.table.pqt", "PASS", True),
            ("alf/#2021-01-01#/trials.table.pqt", "PASS", False)]
    assert choose(engine, rows, "2019-06-01") == []


def test_critical_is_excluded_by_default_and_the_choice_falls_back(engine):
    rows = [("alf/trials.table.pqt", "PASS", False),
            ("alf/#2020-01-01#/trials.table.pqt", "FAIL", False),
            ("alf/#2021-01-01#/trials.table.pqt", "CRITICAL", True)]
    # The default is CRITICAL: QC filters it out first, then no default is left among the others,
    # so ONE takes the greatest remaining revision (FAIL is still kept).
    assert choose(engine, rows) == ["alf/#2020-01-01#/trials.table.pqt"]
    assert choose(engine, rows, "2099-01-01") == ["alf/#2020-01-01#/trials.table.pqt"]
    # Nothing passes: nothing is chosen.
    assert choose(engine, [("spikes.times.npy", "CRITICAL", True)]) == []


def test_qc_critical_includes_critical_rows(engine):
    rows = [("alf/trials.table.pqt", "PASS", False),
            ("alf/#2021-01-01#/trials.table.pqt", "CRITICAL", True)]
    assert choose(engine, rows, qc="CRITICAL") == ["alf/#2021-01-01#/trials.table.pqt"]
    assert choose(engine, rows, qc=50) == ["alf/#2021-01-01#/trials.table.pqt"]
    # and a stricter level drops FAIL and WARNING too
    rows = [("alf/trials.table.pqt", "PASS", False),
            ("alf/#2021-01-01#/trials.table.pqt", "WARNING", True)]
    assert choose(engine, rows, qc="PASS") == ["alf/trials.table.pqt"]


def test_ignore_qc_not_set(engine):
    rows = [("alf/trials.table.pqt", "PASS", False),
            ("alf/#2021-01-01#/trials.table.pqt", "NOT_SET", True)]
    assert choose(engine, rows) == ["alf/#2021-01-01#/trials.table.pqt"]
    assert choose(engine, rows, ignore_qc_not_set=True) == ["alf/trials.table.pqt"]
    assert choose(engine, rows, qc="PASS", ignore_qc_not_set=True) == ["alf/trials.table.pqt"]


def test_revisions_compare_byte_wise_whatever_the_collation(engine):
    if engine.dialect.name == "postgresql":  # the fixture's database must really collate otherwise
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT 'Z' < 'a', 'v1' < 'V2'")).one() == (False, True)
    upper_lower = [("#Z#/a.b.npy", "PASS", False), ("#a#/a.b.npy", "PASS", False)]
    assert choose(engine, upper_lower) == ["#a#/a.b.npy"]              # 'Z' < 'a'
    assert choose(engine, upper_lower, "Zz") == ["#Z#/a.b.npy"]        # 'Z' <= 'Zz' < 'a'
    assert choose(engine, upper_lower, "A") == []                      # 'A' < 'Z'
    versions = [("#v1#/a.b.npy", "PASS", False), ("#V2#/a.b.npy", "PASS", False)]
    assert choose(engine, versions) == ["#v1#/a.b.npy"]                # 'V2' < 'v1'
    prefix = [("alf/#2021-06-30#/a.b.npy", "PASS", False), ("alf/#2021-06-30a#/a.b.npy", "PASS", False)]
    assert choose(engine, prefix) == ["alf/#2021-06-30a#/a.b.npy"]     # a prefix sorts first
    assert choose(engine, prefix, "2021-06-30") == ["alf/#2021-06-30#/a.b.npy"]
    assert choose(engine, prefix, "2021-06-30-") == ["alf/#2021-06-30#/a.b.npy"]  # '-' < 'a'


def test_several_defaults_raise_naming_the_dataset(engine):
    rows = [("alf/probe00/#2020-01-01#/spikes.times.npy", "PASS", True),
            ("alf/probe00/#2021-01-01#/spikes.times.npy", "FAIL", True),
            ("alf/trials.table.pqt", "PASS", True)]
    with pytest.raises(alferr.ALFMultipleRevisionsFound):  # ONE refuses such a table too
        one_choice([(str(i), *r) for i, r in enumerate(rows)], None)
    with engine.connect() as conn:
        trans = conn.begin()
        try:
            insert(conn, SESSION, rows)
            with pytest.raises(revisions.ALFMultipleRevisionsFound) as error:
                revisions.last_before(conn)
            message = str(error.value)
            assert "alf/probe00/spikes.times.npy" in message and SESSION in message
            assert '"2020-01-01"' in message and '"2021-01-01"' in message
            assert "trials" not in message
        finally:
            trans.rollback()
    # Only when no revision is asked, and only among the rows that pass QC (as in ONE).
    assert choose(engine, rows, "2099-01-01") == ["alf/probe00/#2021-01-01#/spikes.times.npy",
                                                  "alf/trials.table.pqt"]
    assert choose(engine, rows, qc="PASS") == ["alf/probe00/#2020-01-01#/spikes.times.npy",
                                               "alf/trials.table.pqt"]


# --- the result frame and the plan ---------------------------------------------------------------

def test_frame_dtypes_whatever_the_path(engine):
    """One session (compiled once), several, all: the same rows with the same dtypes; unknown flags
    and sizes become the nullable dtypes."""
    other = "11111111-2222-3333-4444-555555555555"
    text = pd.Series(["x"]).dtype  # pandas' own text dtype (str with pandas 3)
    with engine.connect() as conn:
        trans = conn.begin()
        try:
            insert(conn, SESSION, [("alf/trials.table.pqt", "PASS", None),
                                   ("alf/#2021-01-01#/trials.table.pqt", "PASS", None),
                                   ("spikes.times.npy", "FAIL", None, {"file_size": 123, "hash": "ab"})])
            insert(conn, other, [("alf/trials.table.pqt", "PASS", True)])
            frames = {
                "one": revisions.last_before(conn, session=SESSION),
                "where": revisions.last_before(conn, where=[dataset_records.c.session_uuid.in_([SESSION])]),
                "all": revisions.last_before(conn).query("session_uuid == @SESSION"),
                "cutoff": revisions.last_before(conn, "2099-01-01", session=SESSION),
            }
            for key, frame in frames.items():
                frame = frame.sort_values("rel_path").reset_index(drop=True)
                assert frame.columns.tolist() == revisions.COLUMNS, key
                assert frame["rel_path"].tolist() == ["alf/#2021-01-01#/trials.table.pqt", "spikes.times.npy"], key
                assert all(frame[c].dtype == text for c in ("dataset_uuid", "rel_path", "revision", "qc", "hash")), key
                assert str(frame["default_revision"].dtype) == "boolean" and frame["default_revision"].isna().all()
                assert frame["exists"].dtype == bool and frame["exists"].all()
                assert str(frame["file_size"].dtype) == "Int64"
                assert frame["file_size"].isna().tolist() == [True, False] and frame["file_size"].iloc[1] == 123
                assert frame["hash"].isna().tolist() == [True, False]
                frame.loc[0, "file_size"] = 7  # a frame of its own, writable
            flagged = revisions.last_before(conn, session=other)
            assert flagged["default_revision"].dtype == bool and flagged["default_revision"].tolist() == [True]
            empty = revisions.last_before(conn, session=other, qc="NOT_SET")  # its only row is PASS
            assert empty.empty and empty.columns.tolist() == revisions.COLUMNS
            assert empty["dataset_uuid"].dtype == text and str(empty["file_size"].dtype) == "Int64"
        finally:
            trans.rollback()


def test_several_defaults_raise_on_every_path(engine):
    rows = [("alf/#2020-01-01#/spikes.times.npy", "PASS", True), ("alf/#2021-01-01#/spikes.times.npy", "PASS", True)]
    with engine.connect() as conn:
        trans = conn.begin()
        try:
            ids = insert(conn, SESSION, rows)
            for call in (lambda: revisions.last_before(conn, session=SESSION), lambda: revisions.last_before(conn),
                         lambda: revisions.chosen_ids(conn, ids)):
                with pytest.raises(revisions.ALFMultipleRevisionsFound,
                                   match='alf/spikes.times.npy of session .* "2020-01-01", "2021-01-01"'):
                    call()
            assert len(revisions.last_before(conn, session=SESSION, strict=False)) == 1
            assert revisions.chosen_ids(conn, ids, strict=False) == [ids[1]]  # the greatest revision
        finally:
            trans.rollback()


def test_sqlite_choice_reads_the_index_not_the_table(tmp_path):
    """The choice groups along ix_dataset_records_revision_choice (no sort, no table read) and then reads
    the chosen rows by rowid, in rowid order."""
    eng = create_engine(str(tmp_path / "p.sqlite"))
    upgrade(eng)
    try:
        with eng.connect() as conn:
            for revision in (None, "2024-01-01"):
                for where in ([], [dataset_records.c.session_uuid == SESSION]):
                    stmt = revisions.last_before_select("sqlite", revision, where=where)
                    compiled = stmt.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
                    plan = [r[3] for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}")]
                    assert any("COVERING INDEX ix_dataset_records_revision_choice" in step for step in plan), plan
                    assert not any(step.startswith("SCAN") and "INDEX" not in step and "choice" not in step
                                   for step in plan), plan
                    assert any("chosen_row USING INTEGER PRIMARY KEY" in step for step in plan), plan
                    # the chosen rowids are sorted first (the subquery's ORDER BY): without it the table
                    # is read at random, several times slower on a large database
                    assert "USE TEMP B-TREE FOR ORDER BY" in plan, plan
    finally:
        eng.dispose()
