"""Hot paths of argilla-server 2.8.0 made cheaper without changing any answer. Runs INSIDE the server venv.

Profiled under the load test (20 annotators submitting at once), most of a submit's CPU went to work
whose result was thrown away or rebuilt on every call:
- every submit (and every record of a bulk upsert) builds webhook events, each loading the dataset with
  five relationships and dumping it through pydantic, before `enqueue_notify_events` finds that no
  webhook is enabled and drops them. We ask that question first: with no enabled webhook nothing is
  built; with one, the original code runs unchanged.
- `Question.parsed_settings` and `MetadataProperty.parsed_settings` compile a pydantic `TypeAdapter`
  on every call (several per submit, one per metadata property per pushed record); one adapter each,
  built once, validates the same way.
- on SQLite, concurrent write transactions collide on the database's single write lock and the loser
  sleeps in SQLite's busy handler (1, 2, 5 ... 100 ms steps) however soon the lock frees: at 20
  annotators that made a p95 of seconds. Writers now queue on an asyncio lock, taken at a
  transaction's first write and given back when it commits or rolls back, so the next writer starts
  the moment the last one ends. SQLite's own locking still holds (other processes, the worker); a
  writer that waits longer than Argilla's SQLite timeout goes on without the queue.

Applied only to the pinned version: another version runs unpatched.
"""

import logging

PINNED = "2.8.0"
log = logging.getLogger("prefab.argilla_speedups")


def apply() -> bool:
    from argilla_server._version import __version__

    if __version__ != PINNED:
        log.warning("argilla-server %s is not %s: running without prefab's speed-ups", __version__, PINNED)
        return False
    _skip_events_without_webhooks()
    _one_settings_adapter_each()
    _queue_sqlite_writers()
    return True


def _skip_events_without_webhooks() -> None:
    import argilla_server.bulk.records_bulk
    import argilla_server.contexts.datasets
    import argilla_server.contexts.distribution
    import argilla_server.contexts.records
    import argilla_server.webhooks.v1.datasets
    import argilla_server.webhooks.v1.records
    import argilla_server.webhooks.v1.responses
    from argilla_server.contexts.webhooks import list_enabled_webhooks

    def guarded(original):
        async def notify(db, event, subject):
            if not await list_enabled_webhooks(db):
                return []  # what enqueue_notify_events returns when no webhook is enabled
            return await original(db, event, subject)

        return notify

    for source, name in ((argilla_server.webhooks.v1.records, "notify_record_event"),
                         (argilla_server.webhooks.v1.responses, "notify_response_event"),
                         (argilla_server.webhooks.v1.datasets, "notify_dataset_event")):
        fast = guarded(getattr(source, name))
        setattr(source, name, fast)
        for user in (argilla_server.bulk.records_bulk, argilla_server.contexts.records, argilla_server.contexts.datasets,
                     argilla_server.contexts.distribution):  # they imported it as `<name>_v1`
            if hasattr(user, f"{name}_v1"):
                setattr(user, f"{name}_v1", fast)


def _one_settings_adapter_each() -> None:
    from pydantic import TypeAdapter

    from argilla_server.models import database

    for model, settings_type in ((database.Question, database.QuestionSettings),
                                 (database.MetadataProperty, database.MetadataPropertySettings)):
        adapter = TypeAdapter(settings_type)
        model.parsed_settings = property(lambda self, adapter=adapter: adapter.validate_python(self.settings))


def _queue_sqlite_writers() -> None:
    import asyncio

    from sqlalchemy import event
    from sqlalchemy.util import await_only

    from argilla_server.database import async_engine
    from argilla_server.settings import settings

    if not settings.database_is_sqlite:
        return
    engine = async_engine.sync_engine
    dialect = engine.dialect
    lock = asyncio.Lock()
    holder: list = []  # the driver connection whose transaction holds the lock

    def raw(connection):
        return getattr(connection, "dbapi_connection", connection)

    def release(connection) -> None:
        if holder and holder[0] is raw(connection):
            holder.clear()
            lock.release()

    @event.listens_for(engine, "before_cursor_execute")
    def take_before_first_write(conn, cursor, statement, parameters, context, executemany):
        if not statement.lstrip()[:7].upper().startswith(("INSERT", "UPDATE", "DELETE", "REPLACE")):
            return
        mine = raw(conn.connection)
        if holder and holder[0] is mine:
            return
        try:
            await_only(asyncio.wait_for(lock.acquire(), settings.database_sqlite_timeout))
        except asyncio.TimeoutError:
            log.warning("a write waited %ss for the writer queue; going on with SQLite's own locking", settings.database_sqlite_timeout)
            return
        holder.append(mine)

    def ends_transaction(original):
        def end(dbapi_connection):
            try:
                original(dbapi_connection)
            finally:
                release(dbapi_connection)

        return end

    dialect.do_commit = ends_transaction(dialect.do_commit)
    dialect.do_rollback = ends_transaction(dialect.do_rollback)
    for name in ("close", "invalidate", "detach"):  # a connection dropped mid-transaction gives the lock back too
        event.listen(engine.pool, name, lambda dbapi_connection, *_: release(dbapi_connection))
