"""Alembic environment: run the migrations on the connection oneprov hands over.

``oneprov.store.migrate.upgrade`` opens the write transaction (BEGIN IMMEDIATE on SQLite, an advisory
lock on PostgreSQL), passes its connection in ``config.attributes['connection']`` and commits when
the migrations are done, so a failed migration leaves the database at its previous version. Run
from the command line (``alembic -x db=PATH_OR_URL upgrade head``) the same engine setup is used.
"""
from alembic import context

from oneprov.store.engine import create_engine
from oneprov.store.migrate import lock_for_setup
from oneprov.store.schema import metadata

config = context.config


def run_migrations(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        transactional_ddl=True,  # SQLite too: the engine makes DDL transactional (see oneprov/store/dialects.py)
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run_migrations(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("db")
    engine = create_engine(url)
    with engine.begin() as conn:
        lock_for_setup(conn)
        run_migrations(conn)
    engine.dispose()
