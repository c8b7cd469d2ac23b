"""Argilla's search filters and sorts as SQL conditions and sort keys on `records`.

They mirror build_elasticsearch_filter and the ES sorts of argilla_server/search_engine/commons.py: typed
equality, dates as ES reads them, missing values last."""

import re
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from argilla_server.enums import MetadataPropertyType, RecordSortField, ResponseStatusFilter, SortOrder
from argilla_server.models import Record, Response, Suggestion
from argilla_server.search_engine import (
    AndFilter,
    MetadataFilterScope,
    RecordFilterScope,
    ResponseFilterScope,
    SuggestionFilterScope,
    TermsFilter,
)
from sqlalchemy import Text, and_, cast, exists, false, func, literal, or_, select, true

from .dialects import Context, values_condition

INDEXED_QUESTION_TYPES = {"rating", "label_selection", "multi_label_selection"}  # ES maps the rest as disabled objects


def _as_uuid(value) -> UUID | None:
    try:
        return value if isinstance(value, UUID) else UUID(str(value))
    except ValueError:
        return None


_PARTIAL_DATE = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")


def _as_datetime(value, upper: bool = False) -> datetime | None:
    """A date as Elasticsearch reads a date field's bound (format strict_date_optional_time||epoch_millis):
    ISO 8601, UTC unless said, down to a year alone, or epoch milliseconds. An upper bound (`lte`) rounds up
    what the value leaves out, as ES does: `le 2024-05-01` takes in the whole day. None when unreadable (ES
    answers 400; no record matches here)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)) or str(value).strip().lstrip("-").isdigit() and len(str(value).strip()) > 4:
        return datetime(1970, 1, 1) + timedelta(milliseconds=float(value))
    text_value = str(value).strip()
    partial = _PARTIAL_DATE.fullmatch(text_value)
    try:
        if partial:
            year, month, day = (int(g) if g else None for g in partial.groups())
            start = datetime(year, month or 1, day or 1)
            if not upper:
                return start
            end = (
                start + timedelta(days=1)
                if day
                else datetime(year + (month == 12), month % 12 + 1, 1)
                if month
                else datetime(year + 1, 1, 1)
            )
            return end - timedelta(microseconds=1)
        parsed = datetime.fromisoformat(text_value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if upper:  # round up the smallest unit written: 10:30 takes in 10:30:59.999999
        time_part = re.split(r"[T ]", text_value, maxsplit=1)[1] if re.search(r"[T ]", text_value) else ""
        clock = re.split(r"[Z+-]", time_part, maxsplit=1)[0]
        units = clock.count(":") + 1 if clock and "." not in clock else 0
        step = {1: timedelta(hours=1), 2: timedelta(minutes=1), 3: timedelta(seconds=1)}.get(units)
        if step:
            parsed += step - timedelta(microseconds=1)
    return parsed.astimezone(UTC).replace(tzinfo=None) if parsed.tzinfo else parsed


_RECORD_COLUMNS = {
    RecordSortField.id.value: Record.id,
    RecordSortField.external_id.value: Record.external_id,
    RecordSortField.inserted_at.value: Record.inserted_at,
    RecordSortField.updated_at.value: Record.updated_at,
    RecordSortField.status.value: Record.status,
}


def _text_range(column, flt):
    bounds = [column >= str(flt.ge)] if flt.ge is not None else []
    bounds += [column <= str(flt.le)] if flt.le is not None else []
    return and_(true(), *bounds)


async def where(ctx: Context, flt) -> Any:
    """A SQL condition on `records` for an engine filter (mirrors build_elasticsearch_filter)."""
    if isinstance(flt, AndFilter):
        return and_(true(), *[await where(ctx, f) for f in flt.filters])
    scope = flt.scope

    if isinstance(scope, RecordFilterScope):
        column = _RECORD_COLUMNS.get(scope.property)
        if column is None:
            return false()
        dates = scope.property in ("inserted_at", "updated_at")
        if isinstance(flt, TermsFilter):
            values = list(flt.values)
            if scope.property == "id":
                values = [u for u in map(_as_uuid, values) if u is not None]
            elif dates:
                values = [d for d in map(_as_datetime, values) if d is not None]
            elif scope.property == "status":  # an enum on PostgreSQL: compared as text, an unknown status is no error
                column = cast(column, Text)
            return column.in_(values) if values else false()
        if scope.property in ("id", "status"):  # keywords in ES: a range compares text
            return _text_range(cast(column, Text), flt)
        bounds = []
        for bound, upper in ((flt.ge, False), (flt.le, True)):
            if bound is not None:
                value = _as_datetime(bound, upper) if dates else bound
                if value is None:
                    return false()
                bounds.append(column <= value if upper else column >= value)
        return and_(true(), *bounds)

    if isinstance(scope, MetadataFilterScope):
        kind = (await ctx.metadata_types()).get(scope.metadata_property)
        if kind is None:
            return false()
        numeric = kind in (MetadataPropertyType.integer, MetadataPropertyType.float)
        return ctx.d.matches(Record.metadata_, [scope.metadata_property], flt, numeric)

    if isinstance(scope, SuggestionFilterScope):
        question = (await ctx.questions()).get(scope.question)
        if question is None:
            return false()
        prop = scope.property if scope.property not in (None, "None") else "value"
        base = select(literal(1)).where(Suggestion.record_id == Record.id, Suggestion.question_id == question["id"])
        if prop in ("agent", "type"):
            column = Suggestion.agent if prop == "agent" else cast(Suggestion.type, Text)  # type: an enum on PostgreSQL
            if not isinstance(flt, TermsFilter):
                return exists(base.where(_text_range(column, flt)))
            return exists(base.where(column.in_([str(v) for v in flt.values])))
        if prop == "value" and question["type"] not in INDEXED_QUESTION_TYPES:
            return false()
        if prop not in ("value", "score"):
            return false()
        je, txt, num = ctx.d.elems(Suggestion.value if prop == "value" else Suggestion.score)
        numeric = prop == "score" or question["type"] == "rating"
        return exists(base.select_from(Suggestion, je).where(values_condition(flt, txt, num, numeric)))

    if isinstance(scope, ResponseFilterScope):
        user_id = scope.user.id if scope.user is not None else None
        by_user = [Response.user_id == user_id] if user_id is not None else []
        if scope.question:
            question = (await ctx.questions()).get(scope.question)
            if question is None or question["type"] not in INDEXED_QUESTION_TYPES:
                return false()
            je, txt, num = ctx.d.elems(Response.values, scope.question, "value")
            return exists(
                select(literal(1))
                .select_from(Response, je)
                .where(
                    Response.record_id == Record.id,
                    *by_user,
                    values_condition(flt, txt, num, question["type"] == "rating"),
                )
            )
        status_text = cast(
            Response.status, Text
        )  # an enum on PostgreSQL: compared as text, an unknown status is no error
        if scope.property == "status" and isinstance(flt, TermsFilter):
            values = [str(v) for v in flt.values]
            parts = []
            if ResponseStatusFilter.pending.value in values:  # pending: no response (of this user) at all
                parts.append(~exists(select(literal(1)).where(Response.record_id == Record.id, *by_user)))
                values = [v for v in values if v != ResponseStatusFilter.pending.value]
            if values or not parts:
                status = [status_text.in_(values)] if values else []
                parts.append(exists(select(literal(1)).where(Response.record_id == Record.id, *status, *by_user)))
            return or_(*parts)
        if scope.property == "status":
            return exists(
                select(literal(1)).where(Response.record_id == Record.id, *by_user, _text_range(status_text, flt))
            )
        return false()  # no such property of a response in ES's mapping: nothing matches

    raise ValueError(f"Cannot process request for search scope {scope}")


async def sort_key(ctx: Context, order) -> Any:
    """A SQL sort key for an engine Order (missing values are put last by the caller, like ES)."""
    scope, desc = order.scope, order.order == SortOrder.desc
    if isinstance(scope, RecordFilterScope):
        return _RECORD_COLUMNS.get(scope.property, Record.inserted_at)
    if isinstance(scope, MetadataFilterScope):
        kind = (await ctx.metadata_types()).get(scope.metadata_property)
        numeric = kind in (MetadataPropertyType.integer, MetadataPropertyType.float)
        return ctx.d.scalar_key(Record.metadata_, [scope.metadata_property], numeric, desc)
    if isinstance(scope, SuggestionFilterScope):
        question = (await ctx.questions()).get(scope.question) or {"id": None, "type": None}
        prop = scope.property if scope.property not in (None, "None") else "value"
        base = select().where(Suggestion.record_id == Record.id, Suggestion.question_id == question["id"])
        if prop in ("agent", "type"):
            return base.add_columns(Suggestion.agent if prop == "agent" else Suggestion.type).scalar_subquery()
        numeric = prop == "score" or question["type"] == "rating"
        key = ctx.d.scalar_key(Suggestion.value if prop == "value" else Suggestion.score, [], numeric, desc)
        return base.add_columns(key).scalar_subquery()
    if isinstance(scope, ResponseFilterScope):
        by_user = [Response.user_id == scope.user.id] if scope.user is not None else []
        base = select().where(Response.record_id == Record.id, *by_user)
        if scope.question:
            question = (await ctx.questions()).get(scope.question) or {"type": None}
            je, txt, num = ctx.d.elems(Response.values, scope.question, "value")
            agg = func.avg(num) if question["type"] == "rating" else (func.max if desc else func.min)(txt)
            return base.add_columns(agg).select_from(Response, je).scalar_subquery()
        return base.add_columns((func.max if desc else func.min)(Response.status)).scalar_subquery()
    raise ValueError(f"Cannot process request for search scope {scope}")


def sortable(value) -> tuple:
    """A sort key that never compares a number with a text (a Python sort would raise): numbers first."""
    return (0, value, "") if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, 0, str(value))


def order_by(keys: list, sort: list) -> list:
    clauses = []
    for key, order in zip(keys, sort, strict=True):
        clauses += [key.is_(None), key.desc() if order.order == SortOrder.desc else key.asc()]
    return clauses


def split_pending_user(flt) -> tuple:
    """(user, other filters) when one filter is the UI's queue filter "pending for this user", else (None, all)."""
    filters = list(flt.filters) if isinstance(flt, AndFilter) else [flt] if flt else []
    for f in filters:
        scope = getattr(f, "scope", None)
        if (
            isinstance(f, TermsFilter)
            and isinstance(scope, ResponseFilterScope)
            and scope.property == "status"
            and not scope.question
            and scope.user is not None
            and {str(v) for v in f.values} == {"pending"}
        ):
            return scope.user.id, [g for g in filters if g is not f]
    return None, filters


def answered_by(user_id):
    return exists(select(literal(1)).where(Response.record_id == Record.id, Response.user_id == user_id))


async def count(conn, where_a, pending_user) -> int:
    """Matches of where_a, less those the user answered: |A and not E| = |A| - |A and E|, counted from the
    user's responses instead of probing every record."""
    total = (await conn.execute(select(func.count()).select_from(Record).where(where_a))).scalar()
    if pending_user is not None:
        answered = select(Response.record_id).where(Response.user_id == pending_user)
        total -= (
            await conn.execute(select(func.count()).select_from(Record).where(where_a, Record.id.in_(answered)))
        ).scalar()
    return total
