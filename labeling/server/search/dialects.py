"""The SQL underneath the search engine: its connection pool, the SQLite and PostgreSQL dialects, a query's context.

What differs between the two databases (JSON, md5) sits behind one interface; JSON values are compared as
typed values; Context loads what one query needs to know about its dataset."""

import hashlib
import math

from argilla_server.models import Field, MetadataProperty, Question, Record
from argilla_server.search_engine import TermsFilter
from argilla_server.settings import settings
from sqlalchemy import Float, Text, and_, case, cast, event, exists, false, func, literal, or_, select, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import create_async_engine

_engine = None  # own connection pool: the app's request session holds one of the app pool while it calls us


def db_engine():
    global _engine
    if _engine is None:
        _engine = create_async_engine(settings.database_url, **settings.database_engine_args)
        if _engine.dialect.name == "sqlite":  # PostgreSQL has md5() built in; SQLite gets Python's (a public hook)
            event.listen(
                _engine.sync_engine,
                "connect",
                lambda conn, _: conn.create_function("prefab_md5", 1, _md5_hex, deterministic=True),
            )
    return _engine


def _md5_hex(value: str) -> str:
    return hashlib.md5(value.encode()).hexdigest()


def rank(seed: str, record_hex: str) -> float:
    """A user's random order of the records, in [0, 1): md5 of (user and dataset, record), the order the SQL
    sorts by (an independent shuffle per user, as ES's random_score seeded with the user id)."""
    return int(_md5_hex(f"{seed}:{record_hex}")[:12], 16) / 2**48


class _Sqlite:
    name = "sqlite"

    @staticmethod
    def _path(keys) -> str:
        return "$" + "".join(f'."{k}"' for k in keys)

    def elems(self, col, *keys):
        """(from-clause, text value, numeric value) of a JSON value that may be a scalar or an array."""
        je = func.json_each(col, self._path(keys)).table_valued("value", "type").alias()
        txt = case((je.c.type == "true", "true"), (je.c.type == "false", "false"), else_=cast(je.c.value, Text))
        num = case((je.c.type.in_(["integer", "real"]), je.c.value))
        return je, txt, num

    def scalar_key(self, col, keys, numeric: bool, desc: bool):
        """Sort key for a JSON value: the value, or the min (asc) / max (desc) of an array."""
        path = self._path(keys)
        je, txt, num = self.elems(col, *keys)
        agg = (func.max if desc else func.min)(num if numeric else txt)
        scalar = func.json_extract(col, path)  # a keyword sorts as text in ES, numbers in it too ("10" < "9")
        return case(
            (func.json_type(col, path) == "array", select(agg).select_from(je).scalar_subquery()),
            else_=scalar if numeric else cast(scalar, Text),
        )

    def matches(self, col, keys, flt, numeric: bool = False):
        """A terms/range filter on a JSON value; scalars are read directly, arrays (any element) through json_each."""
        path = self._path(keys)
        kind = func.json_type(col, path)
        je, txt, num = self.elems(col, *keys)
        scalar_txt = case(
            (kind == "true", "true"), (kind == "false", "false"), else_=cast(func.json_extract(col, path), Text)
        )
        scalar_num = case((kind.in_(["integer", "real"]), func.json_extract(col, path)))
        return or_(
            and_(kind != "array", values_condition(flt, scalar_txt, scalar_num, numeric)),
            and_(
                kind == "array",
                exists(select(literal(1)).select_from(je).where(values_condition(flt, txt, num, numeric))),
            ),
        )

    def json_text(self, col):
        return cast(col, Text)

    def field_text(self, col, name):
        return func.json_extract(col, self._path([name]))

    def rank(self, seed: str):
        """rank's order in SQL: the md5 hex digest sorts as its number does."""
        return func.prefab_md5(literal(f"{seed}:") + cast(Record.id, Text))


class _Postgres:
    name = "postgresql"

    @staticmethod
    def _get(col, keys):
        value = cast(col, JSONB)
        for key in keys:
            value = value.op("->")(key)
        return value

    def elems(self, col, *keys):
        value = self._get(col, keys)
        array = case((func.jsonb_typeof(value) == "array", value), else_=func.jsonb_build_array(value))
        je = func.jsonb_array_elements(array).table_valued("value").lateral()
        txt = je.c.value.op("#>>")(text("'{}'"))
        num = case((func.jsonb_typeof(je.c.value) == "number", cast(txt, Float)))
        return je, txt, num

    def scalar_key(self, col, keys, numeric: bool, desc: bool):
        value = self._get(col, keys)
        je, txt, num = self.elems(col, *keys)
        agg = (func.max if desc else func.min)(num if numeric else txt)
        as_text = value.op("#>>")(text("'{}'"))
        scalar = case((func.jsonb_typeof(value) == "number", cast(as_text, Float))) if numeric else as_text
        return case((func.jsonb_typeof(value) == "array", select(agg).select_from(je).scalar_subquery()), else_=scalar)

    def matches(self, col, keys, flt, numeric: bool = False):
        je, txt, num = self.elems(col, *keys)
        return exists(select(literal(1)).select_from(je).where(values_condition(flt, txt, num, numeric)))

    def json_text(self, col):
        return cast(col, Text)

    def field_text(self, col, name):
        return cast(col, JSONB).op("->>")(name)

    def rank(self, seed: str):
        return func.md5(literal(f"{seed}:") + func.replace(cast(Record.id, Text), "-", ""))


def dialect(conn):
    return _Postgres() if conn.dialect.name == "postgresql" else _Sqlite()


def _as_number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def values_condition(flt, txt, num, numeric: bool = False):
    """terms: equal values (compared as numbers on a numeric field, as ES compares 5 and 5.0); range: between."""
    if isinstance(flt, TermsFilter):
        if numeric:
            numbers = [n for n in map(_as_number, flt.values) if n is not None]
            return num.in_(numbers) if numbers else false()
        return txt.in_([str(v) for v in flt.values])
    conditions = [num.is_not(None)]
    for bound, upper in ((flt.ge, False), (flt.le, True)):
        if bound is not None:
            number = _as_number(bound)
            if number is None:
                return false()
            conditions.append(num <= number if upper else num >= number)
    return and_(*conditions)


class Context:
    """What one query needs to know about its dataset, loaded once per call."""

    def __init__(self, conn, dataset):
        self.conn = conn
        self.d = dialect(conn)
        self.dataset_id = dataset.id
        self._questions = None
        self._metadata = None
        self._fields = None

    async def questions(self) -> dict[str, dict]:
        if self._questions is None:
            rows = await self.conn.execute(
                select(Question.id, Question.name, Question.settings).where(Question.dataset_id == self.dataset_id)
            )
            self._questions = {r.name: {"id": r.id, "type": (r.settings or {}).get("type")} for r in rows}
        return self._questions

    async def metadata_types(self) -> dict[str, str]:
        if self._metadata is None:
            rows = await self.conn.execute(
                select(MetadataProperty.name, MetadataProperty.settings).where(
                    MetadataProperty.dataset_id == self.dataset_id
                )
            )
            self._metadata = {r.name: (r.settings or {}).get("type") for r in rows}
        return self._metadata

    async def fields(self) -> dict[str, str]:
        if self._fields is None:
            rows = await self.conn.execute(
                select(Field.name, Field.settings).where(Field.dataset_id == self.dataset_id)
            )
            self._fields = {r.name: (r.settings or {}).get("type") for r in rows}
        return self._fields
