"""The public API's docstrings are numpydoc: a summary, every parameter named, and what comes back."""
from __future__ import annotations

import inspect

import pytest
from numpydoc.docscrape import NumpyDocString

import oneprov
from oneprov import audit, web
from oneprov.client.one import ONE
from oneprov.client.one_api import Recording
from oneprov.export import one_files, prov_json, report, rocrate
from oneprov.store import Store

#: Functions, methods and classes (a class: its docstring documents ``__init__``'s parameters).
CALLABLES = [
    oneprov.open_store,
    *(getattr(Store, name) for name in (
        "import_cache", "ingest", "sql", "start_run", "finish_run", "resolve_run", "retire_run", "runs", "mark",
        "record_access", "record_query", "record_exports", "record_answer", "merge_tables", "latest_tables",
        "datasets_last_before", "loaded_ids", "close", "frame", "reading", "writing", "connection",
        "driver_write", "driver_reading")),
    oneprov.record, Recording, Recording.stop, Recording.scope,
    ONE, *(getattr(ONE, name) for name in (
        "search", "list_datasets", "load_dataset", "load_datasets", "load_object", "load_collection",
        "load_dataset_from_id", "save_loaded_ids", "save_cache", "load_cache", "scope", "close", "eid2path",
        "path2eid")),
    audit.show, audit.stale, audit.diff, audit.cutoff,
    prov_json.export_prov, prov_json.prov_document, rocrate.export_rocrate, report.write_report,
    one_files.export_loaded_ids, one_files.export_cache, one_files.cache_frames, one_files.loaded_ids_filename,
    web.serve, web.metadata, web.serve_command,
]
PROPERTIES = [Store.schema_version, Store.head_version, Recording.run_id,
              *(getattr(ONE, name) for name in ("offline", "alyx", "project", "label", "run_id"))]


def _name(obj) -> str:
    return getattr(obj, "__qualname__", None) or repr(obj)


def _documented(doc: NumpyDocString) -> set[str]:
    """The parameter names of the Parameters section (``a, b : int`` names two)."""
    return {name.strip() for p in doc["Parameters"] for name in p.name.split(",")}


@pytest.mark.parametrize("obj", CALLABLES, ids=_name)
def test_numpydoc_sections(obj):
    doc = NumpyDocString(inspect.getdoc(obj) or "")
    assert doc["Summary"], f"{_name(obj)}: no summary"
    signature = inspect.signature(obj.__init__ if inspect.isclass(obj) else obj)
    params = [p for p in signature.parameters.values() if p.name != "self"]
    documented = _documented(doc)
    missing = [p.name for p in params if p.name not in documented and f"*{p.name}" not in documented
               and f"**{p.name}" not in documented]
    assert not missing, f"{_name(obj)}: Parameters does not name {missing}"
    if not inspect.isclass(obj) and signature.return_annotation not in (None, "None"):
        assert doc["Returns"] or doc["Yields"], f"{_name(obj)}: no Returns (or Yields) section"


@pytest.mark.parametrize("prop", PROPERTIES, ids=lambda p: _name(p.fget))
def test_properties_have_a_summary(prop):
    assert NumpyDocString(inspect.getdoc(prop) or "")["Summary"], f"{_name(prop.fget)}: no summary"
