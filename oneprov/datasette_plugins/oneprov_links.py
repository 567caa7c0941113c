"""A Datasette plugin (loaded by ``oneprov serve`` with ``--plugins-dir``): a value that names a row
of another table or view is a link to it, as the metadata's ``oneprov-links`` settings of each
table say (made from :data:`oneprov.store.schema.LINKS`). Datasette links foreign keys of tables
itself; views have none."""
from __future__ import annotations

from urllib.parse import urlencode

from datasette import hookimpl
from markupsafe import Markup, escape


@hookimpl
def render_cell(value, column, table, database, datasette):
    """A link to the rows of the named table whose column equals ``value`` (None: render as usual)."""
    if table is None or value is None or isinstance(value, (dict, bytes)):
        return None
    target = ((datasette.plugin_config("oneprov-links", database=database, table=table) or {})
              .get("links", {}).get(column))
    if not target:
        return None
    other, key = target
    href = datasette.urls.table(database, other) + "?" + urlencode({key: value})
    return Markup(f'<a href="{escape(href)}">{escape(value)}</a>')
