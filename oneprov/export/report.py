"""One self-contained HTML report of a project, a run or a label: ``oneprov report``.

The runs and their status; loads over time per project; the QC and revision mix each run saw,
against today's state (the stale loads of :func:`oneprov.audit.stale`); the datasets per scope;
the exports written. Plots are matplotlib charts inlined as SVG and styles are inline: the file
needs no network to be viewed. Every number shown is in an element with a ``data-count``
attribute naming what it counts, so that a test can check it against the store.

>>> import tempfile, pathlib
>>> from oneprov import open_store
>>> store = open_store(":memory:")
>>> run = store.start_run("demo", label="paper")
>>> path = write_report(store, pathlib.Path(tempfile.mkdtemp()) / "r.html", label="paper")
>>> "<svg" in path.read_text()
True
"""
from __future__ import annotations

import datetime as dt
import html
import io
import os
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

from ..errors import BadInputError
from ..files import write_atomically
from ..store import Store
from ..store.schema import SUCCESS_OUTCOMES, access_events, dataset_records, exports, projects, runs

QC_COLOURS = {"NOT_SET": "#9e9e9e", "PASS": "#2e7d32", "WARNING": "#f9a825", "FAIL": "#e65100", "CRITICAL": "#b71c1c"}


def _runs(store: Store, project: str | None, run: str | None, label: str | None) -> pd.DataFrame:
    given = [v for v in (project, run, label) if v is not None]
    if len(given) > 1:
        raise BadInputError("name what to report with at most one of --project, --run or --label")
    listed = store.runs(project)
    if run is not None:
        listed = listed[listed["run_id"] == run]
    if label is not None:
        listed = listed[listed["label"] == label]
    if listed.empty:
        raise BadInputError("no run matches: nothing to report")
    return listed.sort_values("started_at").reset_index(drop=True)


def _loads(store: Store, run_ids: list[str]) -> pd.DataFrame:
    e, d = access_events.c, dataset_records.c
    return store.frame(
        sa.select(e.run_id, e.event_time, e.scope, e.record_id, d.uuid, d.rel_path, d.revision, d.qc,
                  projects.c.name.label("project"))
        .join(dataset_records, d.id == e.record_id).join(runs, runs.c.id == e.run_id)
        .join(projects, projects.c.id == runs.c.project_id)
        .where(e.run_id.in_(run_ids), e.outcome.in_(SUCCESS_OUTCOMES)).order_by(e.id))


def _svg(figure: Any) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def _plots(runs_: pd.DataFrame, loads: pd.DataFrame, stale_: pd.DataFrame) -> dict[str, str]:
    try:
        import matplotlib
    except ImportError:
        raise BadInputError("oneprov report draws its plots with matplotlib: pip install 'oneprov[report]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = {}
    fig, ax = plt.subplots(figsize=(7, 3))
    for project, group in loads.groupby("project"):
        times = pd.to_datetime(group["event_time"]).sort_values()
        ax.step(times, range(1, len(times) + 1), where="post", label=project)
    ax.set_title("Loads over time, per project")
    ax.set_ylabel("loads (cumulative)")
    if not loads.empty:
        ax.legend()
    fig.autofmt_xdate()
    plots["loads_over_time"] = _svg(fig)

    labels = [str(r.label or r.run_id[:8]) for r in runs_.itertuples()]
    fig, ax = plt.subplots(figsize=(7, 3))
    bottom = [0] * len(runs_)
    for qc, colour in QC_COLOURS.items():
        counts = [int(((loads["run_id"] == r) & (loads["qc"] == qc)).sum()) for r in runs_["run_id"]]
        ax.bar(labels, counts, bottom=bottom, color=colour, label=qc)
        bottom = [b + c for b, c in zip(bottom, counts)]
    stale_counts = [int((stale_["run_id"] == r).sum()) for r in runs_["run_id"]]
    ax.plot(labels, stale_counts, "kx", markersize=9, label="stale today")
    ax.set_title("QC of the loads as each run saw them, and stale loads today")
    ax.set_ylabel("loads")
    ax.legend(fontsize="small")
    plots["qc_mix"] = _svg(fig)

    fig, ax = plt.subplots(figsize=(7, 3))
    revised = [int(((loads["run_id"] == r) & (loads["revision"] != "")).sum()) for r in runs_["run_id"]]
    unrevised = [int(((loads["run_id"] == r) & (loads["revision"] == "")).sum()) for r in runs_["run_id"]]
    ax.bar(labels, unrevised, label="unrevised", color="#90caf9")
    ax.bar(labels, revised, bottom=unrevised, label="revised", color="#1565c0")
    ax.set_title("Revision mix of each run's loads")
    ax.legend(fontsize="small")
    plots["revision_mix"] = _svg(fig)
    return plots


def _table(frame: pd.DataFrame, name: str) -> str:
    if frame.empty:
        return f'<p data-count="{name}-rows">0</p><p>(none)</p>'
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape('' if pd.isna(v) else str(v))}</td>" for v in row) + "</tr>"
                   for row in frame.itertuples(index=False))
    return (f'<p>rows: <span data-count="{name}-rows">{len(frame)}</span></p>'
            f'<table class="{name}"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>')


def write_report(store: Store, output: str | os.PathLike, *, project: str | None = None, run: str | None = None,
                 label: str | None = None) -> Path:
    """Write the report of a ``project``, a ``run`` (an id) or a ``label`` (or of every run) to ``output``.

    Parameters
    ----------
    store : Store
        The store.
    output : str or os.PathLike
        The HTML file to write (replaced if it exists); its folder must exist.
    project : str, optional
        The runs of this project.
    run : str, optional
        This run (a run id).
    label : str, optional
        The runs with this label.

    Returns
    -------
    pathlib.Path
        The file written (``output``).

    Raises
    ------
    BadInputError
        More than one of ``project``, ``run`` and ``label`` is given; no run matches; or matplotlib
        is not installed (``pip install 'oneprov[report]'``).
    OSError
        The file cannot be written (e.g. its folder does not exist).
    DatabaseError
        The database cannot be read.
    """
    from ..audit import stale

    runs_ = _runs(store, project, run, label)
    run_ids = runs_["run_id"].tolist()
    loads = _loads(store, run_ids)
    stale_ = stale(store, project=project, run=run, include_retired=True)
    stale_ = stale_[stale_["run_id"].isin(run_ids)]
    scopes = (loads.assign(scope=loads["scope"].fillna("(no scope)")).groupby("scope")["uuid"].nunique()
              .rename("datasets").reset_index())
    with store.reading() as conn:
        written = pd.DataFrame([r._asdict() for r in conn.execute(
            sa.select(exports.c.kind, exports.c.path, exports.c.rows, exports.c.created_at, exports.c.run_id)
            .where(exports.c.run_id.in_(run_ids)).order_by(exports.c.id))])
    plots = _plots(runs_, loads, stale_)
    title = f"oneprov report: {'project ' + project if project else 'run ' + run if run else 'label ' + label if label else 'all runs'}"
    shown_runs = runs_[["run_id", "label", "project", "status", "started_at", "finished_at", "loads", "script_path",
                        "git_commit"]]
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }}
td, th {{ border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; }}
th {{ background: #f0f0f0; }}
.plot svg {{ max-width: 100%; height: auto; }}
</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p>Generated {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')} from the provenance store.
Runs: <span data-count="runs">{len(runs_)}</span>; successful loads: <span data-count="loads">{len(loads)}</span>;
stale loads today: <span data-count="stale">{len(stale_)}</span>.</p>
<h2>Runs</h2>{_table(shown_runs, "runs")}
<h2>Loads over time</h2><div class="plot" id="loads_over_time">{plots['loads_over_time']}</div>
<h2>QC and revisions seen, against today</h2>
<div class="plot" id="qc_mix">{plots['qc_mix']}</div>
<div class="plot" id="revision_mix">{plots['revision_mix']}</div>
<h2>Stale loads</h2>{_table(stale_[["label", "rel_path", "reason", "seen", "now"]] if len(stale_) else stale_, "stale")}
<h2>Datasets per scope</h2>{_table(scopes, "scopes")}
<h2>Exports</h2>{_table(written, "exports")}
<script>
window.addEventListener("error", function (e) {{ document.body.dataset.error = String(e.message); }});
window.addEventListener("load", function () {{
  var plots = document.querySelectorAll(".plot svg"), drawn = 0;
  plots.forEach(function (svg) {{ var box = svg.getBoundingClientRect(); if (box.width > 0 && box.height > 0) drawn++; }});
  document.body.dataset.plotsDrawn = String(drawn);
}});
</script>
</body></html>
"""
    path = Path(output)
    write_atomically(path, lambda f: f.write(body.encode()))
    return path


__all__ = ["write_report"]
