"""Shared pieces of the benchmarks: scales, the generated workspace, timing and machine facts.

Not part of the test suite and not part of the package: ``benchmarks/run.py`` and
``benchmarks/hotspots.py`` import it from this folder.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import resource
import shlex
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:  # benchmark the checkout this file is in, installed or not
    sys.path.insert(0, str(REPO))

#: The dataset every load benchmark loads: a revised dataset, so that the revision choice is exercised
#: (the synthetic scale layout gives every session ``alf/probe00/pykilosort/spikes.times.npy`` unrevised,
#: ``default_revision=False``, and in revision 2024-05-06, ``default_revision=True``).
LOAD_COLLECTION = "alf/probe00/pykilosort"
LOAD_NAME = "spikes.times.npy"
LOAD_REVISION = "2024-05-06"
#: The cut-off of the revision-choice benchmark (a real "last before": it falls between revisions).
REVISION_CUTOFF = "2024-06-01"
#: QC levels ONE keeps by default (qc <= FAIL).
QC_KEPT = ("NOT_SET", "PASS", "WARNING", "FAIL")


@dataclass(frozen=True)
class Scale:
    name: str
    n_sessions: int
    datasets_per_session: int
    load_sessions: int      # sessions whose loaded .npy file is written to disk
    load_calls: int         # timed load_dataset calls per client
    repeats: int            # most repetitions of an operation
    budget_s: float         # stop repeating an operation once its runs took this long
    loaded_ids: int         # N of the loaded-ids CSV benchmark
    revision_sample: int    # sessions timed to extrapolate one-api's all-session revision choice (0: all)
    conc_procs: int         # processes of the concurrency benchmark
    conc_seconds: float     # how long each of them loads
    memory_rows: int        # datasets rows of the memory benchmark (0: skipped unless --memory)

    @property
    def n_datasets(self) -> int:
        return self.n_sessions * self.datasets_per_session


SCALES = {
    "smoke": Scale("smoke", 500, 20, 4, 20, 5, 2.0, 2_000, 100, 8, 1.5, 0),
    "medium": Scale("medium", 5_000, 20, 8, 50, 7, 10.0, 50_000, 500, 8, 5.0, 0),
    "full": Scale("full", 50_000, 20, 8, 100, 5, 20.0, 1_000_000, 500, 8, 10.0, 10_000_000),
}


# -- timing -------------------------------------------------------------------------------------

@dataclass
class Timing:
    times: list[float]
    result: Any = None

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def n(self) -> int:
        return len(self.times)

    def describe(self) -> str:
        if self.n == 1:
            return "1 run"
        return f"median of {self.n} (min {fmt_seconds(min(self.times))}, max {fmt_seconds(max(self.times))})"


def measure(fn: Callable[[], Any], *, repeats: int, budget_s: float, warmup: int = 0,
            cleanup: Callable[[Any], None] | None = None) -> Timing:
    """Run ``fn`` up to ``repeats`` times, stopping once the runs took ``budget_s`` (at least once).

    ``cleanup(result)`` runs after each call, outside the timed part. The last result is kept.
    """
    for _ in range(warmup):
        out = fn()
        if cleanup is not None:
            cleanup(out)
    times: list[float] = []
    result = None
    while len(times) < max(1, repeats):
        if result is not None and cleanup is not None:
            cleanup(result)
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
        if sum(times) >= budget_s:
            break
    return Timing(times, result)


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "—"
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.3g} s"


def fmt_rate(r: float | None, unit: str) -> str:
    if r is None:
        return "—"
    if r >= 1e6:
        return f"{r / 1e6:.3g}M {unit}"
    if r >= 1e3:
        return f"{r / 1e3:.3g}k {unit}"
    return f"{r:.3g} {unit}"


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB.

    Linux's ``VmHWM`` (the high-water mark of this program's memory): ``getrusage``'s ``ru_maxrss``
    is carried over from the parent through fork and exec, so a child started by a large parent
    would report the parent's size. Elsewhere ``ru_maxrss`` (KiB on Linux, bytes on macOS).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2 ** 20 if sys.platform == "darwin" else maxrss / 1024


# -- the workspace -----------------------------------------------------------------------------

@dataclass
class Workspace:
    """A generated cache: big tables, and real ``.npy`` files for the few sessions loaded from."""

    root: str
    cache: str
    scale: str
    seed: int
    n_sessions: int
    n_datasets: int
    load_eids: list[str]
    load_dataset_ids: list[str]
    subject: str
    generate_s: float
    extra: dict = field(default_factory=dict)

    @property
    def cache_dir(self) -> Path:
        return Path(self.cache)

    @property
    def db(self) -> Path:
        return Path(self.root) / "provenance.sqlite"


def prepare(workdir: str | os.PathLike, scale: Scale, *, seed: int = 0, reuse: bool = False,
            log: Callable[[str], None] = print) -> Workspace:
    """Generate ``<workdir>/cache`` for ``scale`` (or reuse a matching one with ``reuse``).

    The tables come from :func:`oneprov.synthetic.make_repository` with ``write_files=False``. For
    ``scale.load_sessions`` sessions the file of ``LOAD_COLLECTION/#LOAD_REVISION#/LOAD_NAME`` is then
    written (a 1,000-float ``.npy``) and its row in ``datasets.pqt`` rewritten with the file's real
    size and md5, so that both clients check size and hash against the truth.
    """
    import numpy as np
    from oneprov.alf import session_path
    from oneprov.synthetic import make_repository
    from oneprov.tables import write_datasets

    workdir = Path(workdir).absolute()
    marker = workdir / "workspace.json"
    if reuse and marker.is_file():
        ws = Workspace(**json.loads(marker.read_text()))
        if ws.scale == scale.name and ws.seed == seed and Path(ws.cache, "datasets.pqt").is_file():
            log(f"reusing the workspace in {workdir}")
            return ws
    cache = workdir / "cache"
    if cache.exists():
        shutil.rmtree(cache)
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    info = make_repository(cache, n_sessions=scale.n_sessions, datasets_per_session=scale.datasets_per_session,
                           write_files=False, seed=seed)
    generated = time.perf_counter() - start
    d = info.datasets
    wanted = f"{LOAD_COLLECTION}/#{LOAD_REVISION}#/{LOAD_NAME}"
    candidates = d[(d["rel_path"] == wanted) & d["exists"].astype(bool) & d["qc"].isin(QC_KEPT)]
    k = min(scale.load_sessions, len(candidates))
    if k == 0:
        raise RuntimeError(f"no session has a loadable {wanted}")
    picks = candidates.iloc[sorted(set(np.linspace(0, len(candidates) - 1, k).astype(int).tolist()))]
    sessions = info.sessions.set_index("id")
    for j, (index, rec) in enumerate(picks.iterrows()):
        ses = sessions.loc[rec["eid"]]
        path = cache / session_path(ses["lab"], ses["subject"], ses["date"], ses["number"]) / rec["rel_path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, np.arange(1000, dtype=np.float64) + j)
        d.loc[index, "file_size"] = path.stat().st_size
        d.loc[index, "hash"] = hashlib.md5(path.read_bytes()).hexdigest()
    write_datasets(d, cache / "datasets.pqt", {"origin": "oneprov.synthetic", "seed": seed,
                                               "benchmark": f"{k} loaded files written"})
    eids = picks["eid"].tolist()
    ws = Workspace(root=str(workdir), cache=str(cache), scale=scale.name, seed=seed,
                   n_sessions=len(info.sessions), n_datasets=len(d), load_eids=eids,
                   load_dataset_ids=picks["id"].tolist(),
                   subject=str(sessions.loc[eids[0], "subject"]), generate_s=generated)
    marker.write_text(json.dumps(asdict(ws), indent=1))
    return ws


def remove_db(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


# -- facts about the machine and the run --------------------------------------------------------

def machine() -> dict[str, str]:
    def version(module: str) -> str:
        try:
            from importlib.metadata import version as v
            return v(module)
        except Exception:
            return "?"
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 ** 2:.1f} GiB"
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    commit = "?"
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip() or "?"
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "oneprov", "migrations"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        if dirty:
            commit += " (+ uncommitted changes in oneprov/ or migrations/)"
    except Exception:
        pass
    return {
        "cpus": f"{os.cpu_count()} ({usable} usable)",
        "cpu": cpu,
        "memory": mem,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "oneprov": f"{version('oneprov')} at {commit}",
        "one-api": version("one-api"),
        "pandas": version("pandas"), "pyarrow": version("pyarrow"), "sqlalchemy": version("sqlalchemy"),
        "numpy": version("numpy"),
    }


def load_average() -> str:
    """The 1-minute load average: other work on the machine skews every timing."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "?"


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).as_posix(), *sys.argv])
