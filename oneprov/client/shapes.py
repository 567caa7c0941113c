"""What ONE's methods return, shaped from the store's rows as one-api shapes them: tables with its
index (UUIDs) and dtypes, record Bunches, session folders as ``ALFPath``, file contents and ALF
objects read by one-api's own readers (``one.alf.io``).

>>> autocomplete("lab"), autocomplete("subj")
('laboratory', 'subject')
"""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pandas as pd
from iblutil.util import Bunch
from one.alf import io as alfio
from one.util import autocomplete as one_autocomplete

from .. import alf
from ..tables import SESSIONS_COLUMNS

#: ONE's local search terms (``ONE.search_terms()``).
SEARCH_TERMS = ("datasets", "date_range", "laboratory", "number", "projects", "subject", "task_protocol",
                "dataset_qc_lte")

__all__ = ["SEARCH_TERMS", "Bunch", "autocomplete", "dataset_frame", "load_object", "read_file", "session_frame"]


def autocomplete(term: str) -> str:
    """The search term a (unique prefix of a) name stands for, as one-api completes it."""
    # ('dataset' is a prefix of two terms, an error for one-api: here it means 'datasets')
    return one_autocomplete("datasets" if term.casefold() == "dataset" else term, SEARCH_TERMS)


def _uuids(values: Any) -> list[uuid.UUID]:
    return [uuid.UUID(v) for v in values]


def session_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """Session rows shaped like one-api's sessions table (index ``id`` of UUIDs)."""
    frame = rows[SESSIONS_COLUMNS].copy()
    frame["number"] = frame["number"].astype("int64")
    frame.index = pd.Index(_uuids(frame.pop("id")), name="id")
    return frame


def dataset_frame(rows: pd.DataFrame, *, keep_eid: bool) -> pd.DataFrame:
    """Dataset rows shaped like one-api's datasets table: index ``id`` (or ``(eid, id)``) of UUIDs,
    one-api's columns and dtypes."""
    empty = not len(rows)
    frame = pd.DataFrame({
        "rel_path": rows["rel_path"].to_numpy(dtype=object),
        "file_size": pd.array(rows["file_size"].to_numpy(), dtype="UInt64") if not empty else pd.array([], dtype="UInt64"),
        "hash": rows["hash"].to_numpy(dtype=object), "exists": rows["exists"].astype(bool).to_numpy(),
        "qc": pd.Categorical(rows["qc"].to_numpy(), dtype=alf.QC_DTYPE),
        "default_revision": rows["default_revision"].astype("boolean").fillna(False).astype(bool).to_numpy(),
    })
    ids = pd.Index(_uuids(rows["id"]), name="id")
    frame.index = (pd.MultiIndex.from_arrays([_uuids(rows["session_id"]), ids], names=["eid", "id"]) if keep_eid
                   else ids)
    return frame


def read_file(path: Path) -> Any:
    """The content of a dataset file, as one-api reads it (``one.alf.io.load_file_content``)."""
    return alfio.load_file_content(path)


def load_object(paths: list[Path], **kwargs: Any) -> alfio.AlfBunch:
    """Read the files of one ALF object into one-api's ``AlfBunch`` (``one.alf.io.load_object``)."""
    return alfio.load_object(paths, **kwargs)
