"""SQLSearchEngine, the search engine class Argilla calls, answered with SQL over Argilla's own tables.

Registered under ENGINE_NAME through Argilla's public `SearchEngine.register`."""

from typing import Any
from uuid import UUID

import numpy as np
from argilla_server.enums import MetadataPropertyType, SimilarityOrder, SortOrder
from argilla_server.models import Record, Response, Vector
from argilla_server.search_engine import (
    FloatMetadataMetrics,
    IntegerMetadataMetrics,
    SearchEngine,
    SearchResponseItem,
    SearchResponses,
    TermsMetrics,
    TextQuery,
)
from sqlalchemy import Text, and_, cast, func, literal, select, true

from . import filters
from .dialects import Context, db_engine, dialect, rank
from .query import expand_fuzzy, has_fuzzy, parse_query, query_matches, required_terms, tokenize, value_text
from .scoring import dataset_stats, score

ENGINE_NAME = "prefab-sql"
MAX_TERMS = 2**14  # the ES engine's max_terms_size


@SearchEngine.register(engine_name=ENGINE_NAME)
class SQLSearchEngine(SearchEngine):
    """Answers Argilla's search-engine calls with SQL over Argilla's own tables."""

    _vector_cache: dict[Any, dict] = {}

    @classmethod
    async def new_instance(cls) -> "SQLSearchEngine":
        return cls()

    async def close(self):
        pass

    async def ping(self) -> bool:
        try:
            async with db_engine().connect() as conn:
                await conn.execute(select(literal(1)))
            return True
        except Exception:
            return False

    async def info(self) -> dict:
        return {"engine": ENGINE_NAME, "database": db_engine().dialect.name, "module": __file__}

    # The database is the index: writes need no mirroring.
    async def create_index(self, dataset):
        pass

    async def delete_index(self, dataset):
        pass

    async def configure_metadata_property(self, dataset, metadata_property):
        pass

    async def configure_index_vectors(self, vector_settings):
        pass

    async def index_records(self, dataset, records):
        pass

    async def partial_record_update(self, record, **update):
        pass

    async def delete_records(self, dataset, records):
        pass

    async def update_record_response(self, response):
        pass

    async def delete_record_response(self, response):
        pass

    async def update_record_suggestion(self, suggestion):
        pass

    async def delete_record_suggestion(self, suggestion):
        pass

    # ------------------------------------------------------------ progress and metrics

    async def get_dataset_progress(self, dataset) -> dict:
        if dataset.is_draft:
            return {}
        async with db_engine().connect() as conn:
            rows = (
                await conn.execute(
                    select(Record.status, func.count()).where(Record.dataset_id == dataset.id).group_by(Record.status)
                )
            ).all()
        counts = {str(getattr(status, "value", status)): n for status, n in rows}
        return {"total": sum(counts.values()), **counts} if counts else {"total": 0}

    async def get_dataset_user_progress(self, dataset, user) -> dict:
        if dataset.is_draft:
            return {}
        async with db_engine().connect() as conn:
            rows = (
                await conn.execute(
                    select(Response.status, func.count())
                    .join(Record, Record.id == Response.record_id)
                    .where(Record.dataset_id == dataset.id, Response.user_id == user.id)
                    .group_by(Response.status)
                )
            ).all()
        counts = {str(getattr(status, "value", status)): n for status, n in rows}
        return {"total": sum(counts.values()), **counts} if counts else {"total": 0}

    async def compute_metrics_for(self, metadata_property):
        async with db_engine().connect() as conn:
            d = dialect(conn)
            je, txt, num = d.elems(Record.metadata_, metadata_property.name)
            base = select().select_from(Record, je).where(Record.dataset_id == metadata_property.dataset_id)
            if metadata_property.type == MetadataPropertyType.terms:
                total = (await conn.execute(base.add_columns(func.count()).where(txt.is_not(None)))).scalar() or 0
                if total == 0:
                    return TermsMetrics(total=0)
                n_records = func.count(func.distinct(Record.id))
                rows = (
                    await conn.execute(
                        base.add_columns(txt.label("term"), n_records.label("n"))
                        .where(txt.is_not(None))
                        .group_by(txt)
                        .order_by(n_records.desc(), txt.asc())
                        .limit(min(total, MAX_TERMS))
                    )
                ).all()
                return TermsMetrics(total=total, values=[TermsMetrics.TermCount(term=t, count=n) for t, n in rows])
            low, high = (await conn.execute(base.add_columns(func.min(num), func.max(num)))).one()
        if metadata_property.type == MetadataPropertyType.integer:
            return IntegerMetadataMetrics(
                min=None if low is None else int(low), max=None if high is None else int(high)
            )
        return FloatMetadataMetrics(min=low, max=high)

    # ------------------------------------------------------------ search

    async def search(
        self,
        dataset,
        query: TextQuery | str | None = None,
        filter=None,
        sort=None,
        offset: int = 0,
        limit: int = 100,
        user_id: str | UUID | None = None,
    ) -> SearchResponses:
        if isinstance(query, str):
            query = TextQuery(q=query)
        async with db_engine().connect() as conn:
            ctx = Context(conn, dataset)
            keys = [await filters.sort_key(ctx, order) for order in sort or []]
            seed = f"{user_id}:{dataset.id}" if user_id else None
            if query is not None:  # a blank text matches nothing, as in ES
                matching = await filters.where(ctx, filter) if filter else true()
                condition = and_(Record.dataset_id == dataset.id, matching)
                return await self._text_search(ctx, query, condition, keys, sort or [], seed, offset, limit)

            pending_user, others = filters.split_pending_user(filter)
            where_a = and_(Record.dataset_id == dataset.id, *[await filters.where(ctx, f) for f in others])
            condition = and_(where_a, ~filters.answered_by(pending_user)) if pending_user else where_a
            if seed and not sort:
                ordering = [ctx.d.rank(seed), Record.id]
            else:
                ordering = filters.order_by(keys, sort or []) + [Record.inserted_at.asc(), Record.id.asc()]
            ids = (
                (await conn.execute(select(Record.id).where(condition).order_by(*ordering).offset(offset).limit(limit)))
                .scalars()
                .all()
            )
            total = await filters.count(conn, where_a, pending_user)
        return SearchResponses(
            items=[SearchResponseItem(record_id=rid, score=None if sort else 1.0) for rid in ids], total=total
        )

    async def _text_matches(self, ctx: Context, query: TextQuery, condition, extra_columns=()) -> tuple:
        """Rows of records matching `condition` and the text query, with their BM25 scores."""
        fields = await ctx.fields()
        if query.field:
            if query.field not in fields:
                raise Exception(f"Field {query.field} not found in dataset {ctx.dataset_id}")
            searched = {query.field: fields[query.field]}
        else:
            searched = {name: kind for name, kind in fields.items() if kind != "image"}
        node = parse_query(query.q)
        if node is None or not searched:
            return [], {}
        if has_fuzzy(node):
            node = expand_fuzzy(node, await dataset_stats(ctx))
        if query.field:
            haystack = (
                ctx.d.json_text(ctx.d.field_text(Record.fields, query.field))
                if fields[query.field] == "chat"
                else ctx.d.field_text(Record.fields, query.field)
            )
        else:
            haystack = ctx.d.json_text(Record.fields)
        prefilter = [haystack.icontains(term, autoescape=True) for term in required_terms(node)]
        rows = (
            await ctx.conn.execute(
                select(Record.id, Record.fields, Record.inserted_at, *extra_columns).where(condition, *prefilter)
            )
        ).all()

        matched = []
        for row in rows:
            doc = {name: tokenize(value_text(kind, (row.fields or {}).get(name))) for name, kind in searched.items()}
            if query_matches(node, doc):
                matched.append((row, doc))
        if not matched:
            return [], {}
        stats = await dataset_stats(ctx)
        return [row for row, _ in matched], {row.id: score(node, doc, stats) or 1.0 for row, doc in matched}

    async def _text_search(self, ctx, query, condition, keys, sort, seed, offset, limit) -> SearchResponses:
        extra = [key.label(f"k{i}") for i, key in enumerate(keys)]
        rows, scores = await self._text_matches(ctx, query, condition, extra)
        if seed:
            scores = {rid: s * rank(seed, rid.hex) for rid, s in scores.items()}  # random_score multiplies
        rows = sorted(rows, key=lambda r: (r.inserted_at, str(r.id)))
        if sort:
            for i, order in reversed(list(enumerate(sort))):
                present = [r for r in rows if getattr(r, f"k{i}") is not None]
                missing = [r for r in rows if getattr(r, f"k{i}") is None]
                present.sort(key=lambda r: filters.sortable(getattr(r, f"k{i}")), reverse=order.order == SortOrder.desc)
                rows = present + missing
        else:
            rows.sort(key=lambda r: scores[r.id], reverse=True)
        page = rows[offset : offset + limit]
        return SearchResponses(
            items=[SearchResponseItem(record_id=r.id, score=None if sort else scores[r.id]) for r in page],
            total=len(rows),
        )

    # ------------------------------------------------------------ vectors

    async def _vectors(self, conn, vector_settings) -> dict:
        """All vectors of one vector settings as a normalized matrix, reloaded when rows change."""
        key = vector_settings.id
        n_vectors, newest = (
            await conn.execute(
                select(func.count(), func.max(Vector.updated_at)).where(Vector.vector_settings_id == key)
            )
        ).one()
        cached = self._vector_cache.get(key)
        if cached and cached["count"] == n_vectors and cached["newest"] == newest:
            return cached
        rows = (
            await conn.execute(
                select(Vector.record_id, cast(Vector.value, Text)).where(Vector.vector_settings_id == key)
            )
        ).all()
        dims = vector_settings.dimensions
        matrix = np.zeros((len(rows), dims), dtype=np.float32)
        for i, (_rid, raw) in enumerate(rows):
            values = np.fromstring(raw.strip()[1:-1], sep=",", dtype=np.float32) if raw else np.zeros(0)
            if values.size == dims:
                matrix[i] = values
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        matrix = matrix / np.where(norms == 0, 1, norms)
        ids = [rid for rid, _ in rows]
        cached = {
            "count": n_vectors,
            "newest": newest,
            "ids": ids,
            "index": {rid: i for i, rid in enumerate(ids)},
            "matrix": matrix,
        }
        self._vector_cache[key] = cached
        return cached

    async def similarity_search(
        self,
        dataset,
        vector_settings,
        value: list[float] | None = None,
        record=None,
        query: TextQuery | str | None = None,
        filter=None,
        max_results: int = 100,
        order: SimilarityOrder = SimilarityOrder.most_similar,
        threshold: float | None = None,
    ) -> SearchResponses:
        if bool(value) == bool(record):
            raise ValueError("Must provide either vector value or record to compute the similarity search")
        vector_value = value
        excluded = None
        if not vector_value:
            excluded = record.id
            vector_value = record.vector_value_by_vector_settings(vector_settings)
        if not vector_value:
            raise ValueError("Cannot find a vector value to apply with provided info")
        q = np.asarray(vector_value, dtype=np.float32)
        if order == SimilarityOrder.least_similar:
            q = -q
        q = q / (np.linalg.norm(q) or 1.0)
        if isinstance(query, str):
            query = TextQuery(q=query)

        async with db_engine().connect() as conn:
            vectors = await self._vectors(conn, vector_settings)
            if not vectors["ids"]:
                return SearchResponses(items=[], total=0)
            allowed = None
            if filter is not None or query is not None:
                ctx = Context(conn, dataset)
                matching = await filters.where(ctx, filter) if filter else true()
                condition = and_(Record.dataset_id == dataset.id, matching)
                if query is not None:
                    rows, _ = await self._text_matches(ctx, query, condition)
                    allowed = [r.id for r in rows]
                else:
                    allowed = (await conn.execute(select(Record.id).where(condition))).scalars().all()
        if allowed is None:
            candidates = np.arange(len(vectors["ids"]))
        else:
            index = vectors["index"]
            candidates = np.array([index[rid] for rid in allowed if rid in index], dtype=np.int64)
        if excluded is not None and excluded in vectors["index"]:
            candidates = candidates[candidates != vectors["index"][excluded]]
        if candidates.size == 0:
            return SearchResponses(items=[], total=0)
        scores = (1 + vectors["matrix"][candidates] @ q) / 2
        k = min(max_results, candidates.size)
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        items = [SearchResponseItem(record_id=vectors["ids"][candidates[i]], score=float(scores[i])) for i in top]
        if threshold is not None:
            items = [item for item in items if item.score >= threshold]
        return SearchResponses(items=items, total=len(items))
