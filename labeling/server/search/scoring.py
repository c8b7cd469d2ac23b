"""BM25 scores of text matches, and the per-field statistics of a whole dataset that they need.

Scored as Elasticsearch scores simple_query_string; the statistics are counted once per process and kept while
the records' fields stay the same."""

import copy
import dataclasses
import math
from collections import Counter
from typing import Any

from argilla_server.models import Record
from sqlalchemy import func, select

from .dialects import Context
from .query import query_matches, tokenize, value_text


def bm25(tf: int, dl: int, avgdl: float, df: int, n: int, k1: float = 1.2, b: float = 0.75) -> float:
    """Lucene's BM25Similarity (ES's default since Lucene 8: no (k1 + 1) factor), over one field's statistics."""
    idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
    return idf * tf / (tf + k1 * (1 - b + b * dl / max(avgdl, 1e-9)))


@dataclasses.dataclass
class FieldStats:
    """What an index keeps per field for BM25: documents with the field (Lucene's docCount), their tokens in
    all (sumTotalTermFreq), and the documents holding each token (docFreq)."""

    docs: int = 0
    tokens: int = 0
    df: Counter = dataclasses.field(default_factory=Counter)

    @property
    def avgdl(self) -> float:
        return self.tokens / self.docs if self.docs else 1.0


def count_fields(stats: dict[str, FieldStats], doc: dict[str, list[str]]) -> None:
    """Add one tokenized record (field -> tokens) to the per-field statistics."""
    for name, tokens in doc.items():
        if tokens:
            field = stats.setdefault(name, FieldStats())
            field.docs += 1
            field.tokens += len(tokens)
            field.df.update(set(tokens))


def score(node, doc: dict[str, list[str]], stats: dict[str, FieldStats]) -> float:
    """A matching record's score as ES computes it for simple_query_string over several fields: every clause
    that matches adds its score (bool query); a term's score is summed over the fields it is in (dis_max with
    tie_breaker 1); all words of one term must be in one field; prefix and `*` score 1 per field (constant-score
    rewrites). Two approximations: a fuzzy term scores 1 per field (ES: its expansions' blended term scores),
    a phrase as its words (ES: the same idf, the phrase's frequency)."""
    kind = node[0]
    if kind in ("and", "or"):
        return sum(score(child, doc, stats) for child in node[1] if query_matches(child, doc))
    if kind == "not":
        return 0.0
    if kind == "all":
        return 1.0
    total = 0.0
    for name, tokens in doc.items():
        if not query_matches(node, {name: tokens}):
            continue
        if kind in ("terms", "phrase"):
            field = stats.get(name) or FieldStats(
                1, len(tokens), Counter(set(tokens))
            )  # a record newer than the statistics
            total += sum(
                bm25(tokens.count(t), len(tokens), field.avgdl, max(field.df[t], 1), max(field.docs, 1))
                for t in node[1]
            )
        else:
            total += 1.0
    return total


_stats_cache: dict[Any, tuple] = {}  # dataset id -> (fingerprint, field -> FieldStats)


async def dataset_stats(ctx: Context) -> dict[str, FieldStats]:
    """BM25 statistics of every searchable field over the whole dataset, as an index keeps them (not only the
    rows a filter left). Counted by tokenizing every record once, then kept while the records' fields stay
    the same (count, newest insert and total length of the fields: one indexed scan per query; responses and
    status changes leave them alone); records added after the newest counted one are counted on their own."""
    fields = await ctx.fields()
    searched = tuple(sorted((name, kind) for name, kind in fields.items() if kind != "image"))
    of_dataset = Record.dataset_id == ctx.dataset_id
    shape = [func.count(), func.sum(func.length(ctx.d.json_text(Record.fields)))]
    count, length, newest = (
        await ctx.conn.execute(select(*shape, func.max(Record.inserted_at)).where(of_dataset))
    ).one()
    fingerprint = (searched, count, length, newest)
    cached = _stats_cache.get(ctx.dataset_id)
    if cached and cached[0] == fingerprint:
        return cached[1]
    since = None
    if cached and cached[0][0] == searched and cached[0][3] is not None:  # only records newer than the counted ones?
        before = (await ctx.conn.execute(select(*shape).where(of_dataset, Record.inserted_at <= cached[0][3]))).one()
        if tuple(before) == cached[0][1:3]:
            since = cached[0][3]
    stats: dict[str, FieldStats] = copy.deepcopy(cached[1]) if since is not None else {}
    query = select(Record.fields).where(of_dataset, *([Record.inserted_at > since] if since is not None else []))
    result = await ctx.conn.stream(query.execution_options(yield_per=1000))
    async for row in result:
        count_fields(stats, {name: tokenize(value_text(kind, (row.fields or {}).get(name))) for name, kind in searched})
    _stats_cache[ctx.dataset_id] = (fingerprint, stats)
    return stats
