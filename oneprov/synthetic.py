"""A deterministic synthetic ALF repository for tests, the demo and benchmarks.

The small repository (the default) has real files and ONE cache tables that the real one-api loads
in local mode. Every session holds ``trials`` datasets in ``alf``, wheel data, a probe description
and spike sorting in ``alf/probe00/pykilosort`` in two revisions: the unrevised files (flagged
``default_revision=False``) and ``#2024-05-06#`` (flagged True), with different values. The first
session (:attr:`RepositoryInfo.eid`) also holds the awkward cases: a CRITICAL dataset, a dataset in
the table but missing on disk, and one whose size and hash are unknown.

With ``write_files=False`` and the scale knobs (``n_sessions``, ``datasets_per_session``) only the
tables are generated, vectorised: 50,000 sessions and 1,000,000 datasets take seconds.

>>> import tempfile, pathlib
>>> info = make_repository(pathlib.Path(tempfile.mkdtemp()))
>>> len(info.sessions), info.dataset_path(info.revised_id).parent.name
(6, '#2024-05-06#')
>>> info.dataset_path(info.missing_id).exists(), info.dataset_path(info.unknown_size_id).exists()
(False, True)
"""
from __future__ import annotations

import datetime
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .alf import QC_ORDER, session_path
from .tables import hex_strings, uuid_strings, write_datasets, write_sessions

__all__ = ["RepositoryInfo", "make_repository", "REVISION"]

LABS = ["cortexlab", "mainenlab", "churchlandlab", "hoferlab", "wittenlab", "angelakilab"]
TASK_PROTOCOLS = ["_iblrig_tasks_ephysChoiceWorld6.6.2", "_iblrig_tasks_trainingChoiceWorld6.6.2",
                  "_iblrig_tasks_biasedChoiceWorld6.6.2"]
PROJECTS = ["ibl_neuropixel_brainwide_01", "ibl_neuropixel_brainwide_01,ibl_behaviour", None]
#: The revision of the revised spike sorting in the small repository.
REVISION = "2024-05-06"
FIRST_DATE = datetime.date(2024, 1, 8)
SORTING = "alf/probe00/pykilosort"

# (collection, revision, name, qc, default_revision) of every session of the small repository.
_SESSION_DATASETS = [
    ("alf", "", "trials.intervals.npy", "PASS", True),
    ("alf", "", "trials.choice.npy", "PASS", True),
    ("alf", "", "trials.feedbackType.npy", "WARNING", True),
    ("alf", "", "trials.table.pqt", "PASS", True),
    ("alf", "", "_ibl_wheel.position.npy", "NOT_SET", True),
    ("alf", "", "_ibl_wheel.timestamps.npy", "NOT_SET", True),
    ("alf", "", "probes.description.json", "NOT_SET", True),
    ("raw_video_data", "", "_iblrig_leftCamera.frameData.csv", "FAIL", True),
    ("raw_ephys_data/probe00", "", "_spikeglx_ephysData_g0_t0.imec0.ap.meta", "NOT_SET", True),
    (SORTING, "", "spikes.times.npy", "WARNING", False),
    (SORTING, "", "spikes.clusters.npy", "WARNING", False),
    (SORTING, REVISION, "spikes.times.npy", "PASS", True),
    (SORTING, REVISION, "spikes.clusters.npy", "PASS", True),
]
# Only in the first session: the awkward cases.
_CRITICAL = ("alf", "", "licks.times.npy", "CRITICAL", True)
_MISSING = ("alf", "", "trials.stimOn_times.npy", "PASS", True)
_UNKNOWN_SIZE = ("alf", "", "trials.goCue_times.npy", "PASS", True)

# Dataset kinds the scale mode draws on: (collection, name).
_CATALOGUE = [  # kinds interleaved so that even a few datasets per session span several collections
    ("alf", "trials.intervals.npy"), ("alf/probe00/pykilosort", "spikes.times.npy"),
    ("raw_video_data", "_iblrig_leftCamera.frameData.csv"), ("alf", "trials.choice.npy"),
    ("alf/probe00/pykilosort", "spikes.clusters.npy"), ("raw_behavior_data", "_iblrig_taskSettings.raw.json"),
    ("alf", "trials.table.pqt"), ("alf/probe01/pykilosort", "spikes.times.npy"),
    ("raw_ephys_data/probe00", "_spikeglx_ephysData_g0_t0.imec0.ap.meta"), ("alf", "_ibl_wheel.position.npy"),
    ("alf/probe01/pykilosort", "spikes.clusters.npy"), ("alf", "_ibl_wheel.timestamps.npy"),
    ("alf/probe00/pykilosort", "clusters.metrics.pqt"), ("alf", "probes.description.json"),
    ("raw_ephys_data/probe00", "_spikeglx_ephysData_g0_t0.imec0.ap.cbin"), ("alf", "trials.feedbackType.npy"),
    ("alf/probe00/pykilosort", "spikes.amps.npy"), ("raw_video_data", "_iblrig_leftCamera.raw.mp4"),
    ("alf", "trials.stimOn_times.npy"), ("alf/probe01/pykilosort", "clusters.metrics.pqt"),
    ("alf", "trials.goCue_times.npy"), ("alf", "licks.times.npy"), ("alf", "_ibl_leftCamera.times.npy"),
    ("alf", "_ibl_leftCamera.dlc.pqt"),
]
_REVISIONS = ["2023-11-02", "2024-05-06", "2024-11-20"]
_QC_WEIGHTS = [0.30, 0.45, 0.15, 0.07, 0.03]  # NOT_SET, PASS, WARNING, FAIL, CRITICAL


@dataclass
class RepositoryInfo:
    """What :func:`make_repository` made: paths, the normalised tables and interesting ids.

    ``datasets`` is the table as written (``file_size``/``hash`` null where unknown).
    The ``*_id`` datasets all belong to the first session, ``eid``; they are None in the scale
    layout (``datasets_per_session`` given), which plants no special cases.
    """

    root: Path
    sessions_table: Path
    datasets_table: Path
    sessions: pd.DataFrame
    datasets: pd.DataFrame
    eid: str
    revised_id: str | None       #: ``alf/probe00/pykilosort/#2024-05-06#/spikes.times.npy``, default_revision True
    unrevised_id: str | None     #: ``alf/probe00/pykilosort/spikes.times.npy``, default_revision False
    critical_id: str | None      #: ``alf/licks.times.npy``, qc CRITICAL
    missing_id: str | None       #: ``alf/trials.stimOn_times.npy``: exists True in the table, no file on disk
    unknown_size_id: str | None  #: ``alf/trials.goCue_times.npy``: on disk, null file_size and hash
    eids: list[str] = field(default_factory=list)

    def session_dir(self, eid: str) -> Path:
        """The folder of a session: ``<root>/<lab>/Subjects/<subject>/<date>/<NNN>``."""
        rec = self.sessions.set_index("id").loc[eid]
        return self.root / session_path(rec["lab"], rec["subject"], rec["date"], rec["number"])

    def dataset_path(self, dataset_id: str) -> Path:
        """The file of a dataset (which may be absent: see ``missing_id``)."""
        rec = self.datasets.set_index("id").loc[dataset_id]
        return self.session_dir(rec["eid"]) / rec["rel_path"]


def _random_uuids(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` version-4 UUID strings drawn from ``rng`` (vectorised)."""
    raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40  # version 4
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # RFC 4122 variant
    return uuid_strings(raw)


def _rel_path(collection: str, revision: str, name: str) -> str:
    return "/".join(filter(None, [collection, f"#{revision}#" if revision else "", name]))


def _make_sessions(rng: np.random.Generator, n_sessions: int, n_subjects: int) -> pd.DataFrame:
    per_subject = math.ceil(n_sessions / n_subjects)
    k = np.arange(n_sessions)
    subject, j = k // per_subject, k % per_subject
    # Two sessions a day per subject (numbers 1 and 2), one day a week, subjects staggered.
    days = subject % 7 + (j // 2) * 7
    dates = np.datetime64(FIRST_DATE) + days.astype("timedelta64[D]")
    labs = np.array(LABS, dtype=object)[subject % len(LABS)]
    subjects = np.char.add("SYN_", np.char.zfill(subject.astype(str), 4)).astype(object)
    obj = lambda values: pd.Series(values, dtype=object)  # noqa: E731 (keep None, not NaN)
    return pd.DataFrame({
        "id": obj(_random_uuids(rng, n_sessions)),
        "lab": obj(labs),
        "subject": obj(subjects),
        "date": obj(pd.to_datetime(dates).date),
        "number": (j % 2 + 1).astype(np.int64),
        "task_protocol": obj(np.array(TASK_PROTOCOLS, dtype=object)[k % len(TASK_PROTOCOLS)]),
        "projects": obj(np.array(PROJECTS, dtype=object)[subject % len(PROJECTS)]),
    })


def _scale_slots(datasets_per_session: int) -> list[tuple[str, str, str, bool]]:
    """(collection, revision, name, default_revision) of a session's datasets, ~30% revised rows."""
    slots: list[tuple[str, str, str, bool]] = []
    i = 0
    while len(slots) < datasets_per_session:
        collection, name = _CATALOGUE[i % len(_CATALOGUE)]
        if i >= len(_CATALOGUE):  # more kinds than the catalogue: number the extra objects
            name = name.replace(".", f"{i // len(_CATALOGUE)}.", 1)
        # 3 kinds in 7 get a revision: 3 revised rows out of 10 (each keeps its unrevised original).
        if i % 7 in (1, 3, 5) and len(slots) + 2 <= datasets_per_session:
            slots += [(collection, "", name, False), (collection, _REVISIONS[i % 3], name, True)]
        else:
            slots.append((collection, "", name, True))
        i += 1
    return slots


def _scale_datasets(rng: np.random.Generator, eids: np.ndarray, datasets_per_session: int) -> pd.DataFrame:
    slots = _scale_slots(datasets_per_session)
    n = len(eids) * len(slots)
    slot_rel_paths = np.array([_rel_path(c, r, nm) for c, r, nm, _ in slots], dtype=object)
    sizes = pd.array(rng.integers(1_000, 500_000_000, size=n), dtype="Int64")
    unknown = rng.random(n) < 0.01
    sizes[unknown] = pd.NA
    hashes = hex_strings(rng.integers(0, 256, size=(n, 16), dtype=np.uint8))
    hashes[unknown] = None
    obj = lambda values: pd.Series(values, dtype=object)  # noqa: E731
    return pd.DataFrame({
        "id": obj(_random_uuids(rng, n)),
        "eid": obj(np.repeat(eids, len(slots))),
        "rel_path": obj(np.tile(slot_rel_paths, len(eids))),
        "collection": obj(np.tile(np.array([s[0] for s in slots], dtype=object), len(eids))),
        "revision": obj(np.tile(np.array([s[1] for s in slots], dtype=object), len(eids))),
        "name": obj(np.tile(np.array([s[2] for s in slots], dtype=object), len(eids))),
        "file_size": sizes,
        "hash": obj(hashes),
        "exists": rng.random(n) >= 0.005,
        "qc": obj(np.array(QC_ORDER, dtype=object)[rng.choice(len(QC_ORDER), size=n, p=_QC_WEIGHTS)]),
        "default_revision": np.tile(np.array([s[3] for s in slots]), len(eids)),
    })


def _small_datasets(rng: np.random.Generator, eids: np.ndarray) -> pd.DataFrame:
    rows = []
    for i, eid in enumerate(eids):
        extra = [_CRITICAL, _MISSING, _UNKNOWN_SIZE] if i == 0 else []
        for collection, revision, name, qc, default in _SESSION_DATASETS + extra:
            rows.append((eid, _rel_path(collection, revision, name), collection, revision, name, qc, default))
    frame = pd.DataFrame(rows, columns=["eid", "rel_path", "collection", "revision", "name", "qc",
                                        "default_revision"]).astype(object)
    frame.insert(0, "id", pd.Series(_random_uuids(rng, len(frame)), dtype=object))
    frame.insert(6, "file_size", pd.array([pd.NA] * len(frame), dtype="Int64"))
    frame.insert(7, "hash", pd.Series([None] * len(frame), dtype=object))
    frame.insert(8, "exists", True)
    frame["default_revision"] = frame["default_revision"].astype(bool)
    return frame


def _write_file(path: Path, name: str, rng: np.random.Generator, revised: bool) -> None:
    """Write a small, valid file for dataset ``name``; revised files get different values."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 20
    if name.endswith(".npy"):
        if name == "trials.intervals.npy":
            start = np.cumsum(rng.uniform(2, 6, n))
            data = np.column_stack([start, start + rng.uniform(0.5, 1.5, n)])
        elif name in ("trials.choice.npy", "trials.feedbackType.npy"):
            data = rng.choice([-1, 1], n).astype(np.int64)
        elif name == "spikes.clusters.npy":
            data = rng.integers(0, 8 if revised else 5, 100).astype(np.int64)
        elif name.startswith("trials."):   # (one value per trial, as every trials attribute)
            data = np.sort(rng.uniform(0, 100, n))
        else:
            data = np.sort(rng.uniform(0, 100, 100))
            if revised:
                data = data + 1000.0  # a revised file is unmistakable
        np.save(path, data)
    elif name.endswith(".pqt"):
        pd.DataFrame({"stimOn_times": rng.uniform(0, 100, n), "choice": rng.choice([-1, 1], n),
                      "contrast": rng.choice([0.0, 0.0625, 0.125, 0.25, 1.0], n)}).to_parquet(path)
    elif name.endswith(".csv"):
        pd.DataFrame({"frame": np.arange(n), "timestamp": np.cumsum(rng.uniform(0.016, 0.017, n)),
                      "gpio": rng.integers(0, 2, n)}).to_csv(path, index=False)
    elif name.endswith(".json"):
        path.write_text(json.dumps([{"label": "probe00", "model": "3B2", "serial": int(rng.integers(1e9, 2e9))}]))
    else:  # a SpikeGLX-like ``key=value`` text file
        path.write_text(f"imSampRate=30000\nnSavedChans=385\nfileSizeBytes={int(rng.integers(1e9, 2e9))}\n")


def make_repository(root: str | Path, *, n_subjects: int = 3, sessions_per_subject: int = 2, seed: int = 0,
                    write_files: bool = True, n_sessions: int | None = None,
                    datasets_per_session: int | None = None) -> RepositoryInfo:
    """Make a synthetic ALF repository under ``root``; the same arguments give the same repository.

    Writes ``<root>/<lab>/Subjects/<subject>/<date>/<NNN>/<rel_path>`` files (unless
    ``write_files=False``) and ``<root>/sessions.pqt`` / ``<root>/datasets.pqt``. ``n_sessions``
    overrides ``n_subjects * sessions_per_subject`` (then at least ``n_sessions // 25`` subjects);
    ``datasets_per_session`` switches to the scale layout (a catalogue of realistic datasets,
    ~30% revised rows, random QC, 1% unknown sizes), meant for ``write_files=False``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if n_sessions is None:
        n_sessions = n_subjects * sessions_per_subject
    else:
        n_subjects = max(n_subjects, n_sessions // 25)
    if n_sessions < 1:
        raise ValueError("a repository needs at least one session")
    sessions = _make_sessions(rng, n_sessions, min(n_subjects, n_sessions))
    eids = sessions["id"].to_numpy()
    if datasets_per_session is None:
        datasets = _small_datasets(rng, eids)
    else:
        datasets = _scale_datasets(rng, eids, datasets_per_session)

    planted = datasets_per_session is None  # the small layout plants the awkward cases in eids[0]
    if write_files:
        info_ses = sessions.set_index("id")
        sizes, hashes = datasets["file_size"].copy(), datasets["hash"].copy()
        for row, rec in enumerate(datasets.itertuples(index=False)):
            special = planted and rec.eid == eids[0]
            if special and rec.rel_path == _rel_path(*_MISSING[:3]):
                continue
            ses = info_ses.loc[rec.eid]
            path = root / session_path(ses["lab"], ses["subject"], ses["date"], ses["number"]) / rec.rel_path
            _write_file(path, rec.name, rng, revised=bool(rec.revision))
            if special and rec.rel_path == _rel_path(*_UNKNOWN_SIZE[:3]):
                continue
            sizes.iloc[row] = path.stat().st_size
            hashes.iloc[row] = hashlib.md5(path.read_bytes()).hexdigest()
        datasets["file_size"], datasets["hash"] = sizes, hashes
    elif planted:  # tables only: plausible sizes and hashes, the same unknowns
        unknown = (datasets["eid"] == eids[0]) & (datasets["rel_path"] == _rel_path(*_UNKNOWN_SIZE[:3]))
        datasets["file_size"] = pd.array(np.where(unknown, 0, rng.integers(100, 100_000, len(datasets))),
                                         dtype="Int64")
        datasets.loc[unknown, "file_size"] = pd.NA
        datasets["hash"] = pd.Series(np.where(unknown, None, hex_strings(
            rng.integers(0, 256, size=(len(datasets), 16), dtype=np.uint8))), dtype=object)

    metadata = {"origin": "oneprov.synthetic", "seed": seed}
    sessions_table, datasets_table = root / "sessions.pqt", root / "datasets.pqt"
    write_sessions(sessions, sessions_table, metadata)
    write_datasets(datasets, datasets_table, metadata)

    def find(collection: str, revision: str, name: str) -> str | None:
        if not planted:
            return None
        match = datasets[(datasets["eid"] == eids[0]) & (datasets["rel_path"] == _rel_path(collection, revision, name))]
        return match["id"].iloc[0]

    return RepositoryInfo(
        root=root, sessions_table=sessions_table, datasets_table=datasets_table,
        sessions=sessions, datasets=datasets, eid=eids[0], eids=list(eids),
        revised_id=find(SORTING, REVISION, "spikes.times.npy"),
        unrevised_id=find(SORTING, "", "spikes.times.npy"),
        critical_id=find(*_CRITICAL[:3]), missing_id=find(*_MISSING[:3]),
        unknown_size_id=find(*_UNKNOWN_SIZE[:3]),
    )
