"""What ONE's methods return, shaped from the store's rows: frames with ONE's index and dtypes,
record Bunches, ALF objects read into Bunches, and ONE's search term names.

>>> b = Bunch(times=[1, 2])
>>> b.times
[1, 2]
>>> autocomplete("lab"), autocomplete("subj")
('laboratory', 'subject')
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from .. import alf, files
from ..tables import SESSIONS_COLUMNS

#: ONE's local search terms (``ONE.search_terms()``).
SEARCH_TERMS = ("datasets", "date_range", "laboratory", "number", "projects", "subject", "task_protocol",
                "dataset_qc_lte")
_ALIASES = {"dataset": "datasets", "lab": "laboratory", "date": "date_range", "project": "projects",
            "task": "task_protocol"}


class Bunch(dict):
    """A dict whose keys are also attributes (ONE's ``Bunch``/``AlfBunch``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value


def autocomplete(term: str) -> str:
    """The search term a (unique prefix of a) name stands for, in any case as in ONE."""
    term = term.casefold()
    if term in SEARCH_TERMS:
        return term
    if term in _ALIASES:
        return _ALIASES[term]
    matches = [t for t in SEARCH_TERMS if t.startswith(term)]
    if len(matches) != 1:
        raise ValueError(f'Invalid search term "{term}", see `one.search_terms()`')
    return matches[0]


def session_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """Session rows shaped like ONE's sessions table (index ``id``)."""
    frame = rows[SESSIONS_COLUMNS].copy()
    frame["number"] = frame["number"].astype("int64")
    return frame.set_index("id")


def dataset_frame(rows: pd.DataFrame, *, keep_eid: bool) -> pd.DataFrame:
    """Dataset rows shaped like ONE's datasets table: index ``id`` (or ``(eid, id)``), ONE's columns."""
    frame = pd.DataFrame({
        "eid": rows["session_id"].to_numpy(), "id": rows["id"].to_numpy(),
        "rel_path": rows["rel_path"].to_numpy(),
        "file_size": pd.array(rows["file_size"].to_numpy(), dtype="UInt64") if len(rows) else pd.array([], dtype="UInt64"),
        "hash": rows["hash"].to_numpy(), "exists": rows["exists"].astype(bool).to_numpy(),
        "qc": pd.Categorical(rows["qc"].to_numpy(), dtype=alf.QC_DTYPE),
        "default_revision": rows["default_revision"].fillna(False).astype(bool).to_numpy(),
    })
    return frame.set_index(["eid", "id"] if keep_eid else ["id"]).drop(columns=[] if keep_eid else ["eid"])


def load_object(paths: list[Path]) -> Bunch:
    """Read the files of one ALF object into a Bunch keyed by attribute (``attribute_timescale``).

    A ``table`` attribute (a parquet table) is spread into one key per column, as ONE does.
    """
    out = Bunch()
    for path in sorted(paths):
        parts = alf.name_parts(path.name)
        key = "_".join(filter(None, (parts["attribute"], parts["timescale"]))) or path.stem
        key = ".".join(filter(None, (key, parts["extra"])))
        out[key] = files.read_file(path)
    table_key = next((k for k in out if k == "table" or k.startswith(("table_", "table."))), None)
    if table_key is not None and isinstance(out[table_key], pd.DataFrame):
        table = out.pop(table_key)
        suffix = table_key[5:]
        for column in table.columns:
            out[f"{column}{suffix}"] = table[column].to_numpy()
    return out
