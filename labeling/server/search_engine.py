"""An Argilla search engine answered from Argilla's own database (SQLite or PostgreSQL).

Runs INSIDE the Argilla server venv (only argilla_server and its dependencies are importable there).
Argilla 2.x needs Elasticsearch or OpenSearch only as a search index over data it already keeps in its
database; `SearchEngine.register` lets us answer the same queries from the database itself, so the
embedded server needs no JVM, no Docker and no index to keep in sync: every write method is a no-op.

Semantics mirror argilla_server/search_engine/commons.py (the Elasticsearch engine):
- filters: record props, metadata (terms/range, arrays match any element), suggestions (value, score,
  agent, type), responses per user (pending = the user has no response; pending without a user = no
  response at all), response values; `and` of all.
- filters compare numbers as numbers on numeric fields (5 equals 5.0) and read dates as ES does (partial
  dates, epoch milliseconds, an inclusive upper bound rounded up: `le 2024-05-01` takes in the day).
- text: simple_query_string with AND as default operator over `fields.*` or one field, scored BM25 with each
  field's statistics over the whole dataset (kept per process until the records' fields change); words
  by Unicode text segmentation (UAX #29, the `regex` package), as ES's standard analyzer splits them; the
  query read as Lucene's SimpleQueryParser reads it (`*`, `|`, `+`, `-`, parentheses, phrases with slop,
  prefixes, fuzzy terms without transpositions, each standing for at most 10 terms of the index).
- sort: ES defaults (missing values last, asc takes the min and desc the max of multi-valued fields,
  response values averaged); /me searches without sort come in a random order of each user's own, stable
  (md5 of user, dataset and record: ES's random_score seeded with the user id), also under a text query.
- similarity: exact cosine over the stored vectors (numpy), least similar = most similar to -v,
  score (1 + cos) / 2 like ES `cosine`.
- progress and metrics: terms / min-max aggregations.
One deliberate difference: per-user progress counts only that user's responses (ES aggregates the
statuses of every response on the records the user answered, which double counts shared records).

labeling/server/main.py imports it before starting the app or the worker, so it is registered there.
"""

import copy
import dataclasses
import functools
import hashlib
import itertools
import math
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import numpy as np
import regex
from argilla_server.enums import MetadataPropertyType, RecordSortField, ResponseStatusFilter, SimilarityOrder, SortOrder
from argilla_server.models import Field, MetadataProperty, Question, Record, Response, Suggestion, Vector
from argilla_server.search_engine import (
    AndFilter,
    FloatMetadataMetrics,
    IntegerMetadataMetrics,
    MetadataFilterScope,
    RecordFilterScope,
    ResponseFilterScope,
    SearchEngine,
    SearchResponseItem,
    SearchResponses,
    SuggestionFilterScope,
    TermsFilter,
    TermsMetrics,
    TextQuery,
)
from argilla_server.settings import settings
from sqlalchemy import Float, Text, and_, case, cast, event, exists, false, func, literal, or_, select, text, true
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import create_async_engine

ENGINE_NAME = "prefab-sql"
MAX_TERMS = 2**14  # the ES engine's max_terms_size
INDEXED_QUESTION_TYPES = {"rating", "label_selection", "multi_label_selection"}  # ES maps the rest as disabled objects

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


def _rank(seed: str, record_hex: str) -> float:
    """A user's random order of the records, in [0, 1): md5 of (user and dataset, record), the order the SQL
    sorts by (an independent shuffle per user, as ES's random_score seeded with the user id)."""
    return int(_md5_hex(f"{seed}:{record_hex}")[:12], 16) / 2**48


# ---------------------------------------------------------------- dialect helpers (JSON differs)


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
            and_(kind != "array", _values_condition(flt, scalar_txt, scalar_num, numeric)),
            and_(
                kind == "array",
                exists(select(literal(1)).select_from(je).where(_values_condition(flt, txt, num, numeric))),
            ),
        )

    def json_text(self, col):
        return cast(col, Text)

    def field_text(self, col, name):
        return func.json_extract(col, self._path([name]))

    def rank(self, seed: str):
        """_rank's order in SQL: the md5 hex digest sorts as its number does."""
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
        return exists(select(literal(1)).select_from(je).where(_values_condition(flt, txt, num, numeric)))

    def json_text(self, col):
        return cast(col, Text)

    def field_text(self, col, name):
        return cast(col, JSONB).op("->>")(name)

    def rank(self, seed: str):
        return func.md5(literal(f"{seed}:") + func.replace(cast(Record.id, Text), "-", ""))


def _dialect(conn):
    return _Postgres() if conn.dialect.name == "postgresql" else _Sqlite()


# ---------------------------------------------------------------- text query (simple_query_string subset)

_WORD_BREAKS = regex.compile(r"\b", flags=regex.WORD | regex.V1)  # Unicode text segmentation (UAX #29)
_HAS_WORD = regex.compile(r"\w")


# UAX #29 on ASCII alone, five times faster: letters, digits and _ join; `:`, `.` and `'` join two letters (WB6-7),
# `,`, `;`, `.` and `'` two digits (WB11-12). A test holds it to the general rule on random ASCII text.
_ASCII_WORD = re.compile(r"[A-Za-z0-9_]+(?:(?:(?<=[A-Za-z])[:.'](?=[A-Za-z])|(?<=[0-9])[,;.'](?=[0-9]))[A-Za-z0-9_]+)*")


def tokenize(value: str) -> list[str]:
    """ES's standard analyzer: the words of Unicode text segmentation (UAX #29, as Lucene's StandardTokenizer;
    a Chinese ideograph or a hiragana is a word of its own, a combining mark stays with its letter),
    lowercased, accents kept."""
    if value.isascii():
        return _ASCII_WORD.findall(value.lower())
    return _words(value)


def _words(value: str) -> list[str]:
    return [t.lower() for t in _WORD_BREAKS.split(value) if _HAS_WORD.search(t)]


# A text query is a tree: ("and" | "or", [nodes]), ("not", node), ("all",), ("terms", [tokens]) (every token
# in one field), ("phrase", [tokens], slop), ("prefix", text) or ("fuzzy", text, edits).
_TOKEN_ENDS = set('"|+() \t\n\r')  # SimpleQueryParser.tokenFinished


def parse_query(q: str):
    """Lucene's SimpleQueryParser, as ES's simple_query_string runs it for Argilla (commons.py
    es_simple_query_string: default operator AND, analyze_wildcard and fuzzy_transpositions off): `*` alone
    matches every record; None when nothing in `q` can be searched (ES matches no record then)."""
    if q.strip() == "*":
        return ("all",)
    return _parse(q, 0, len(q))


def _parse(q: str, i: int, end: int):
    """parseSubQuery: operators fold left to right; a change of operator makes what came before one operand."""
    top, previous, current, nots = None, None, None, 0

    def add(branch):
        nonlocal top, previous, current
        if branch is None:
            return
        if nots % 2:
            branch = ("not", branch)
        if top is None:
            top = branch
        else:
            op = current or "and"
            top = (op, (top[1] if previous == op else [top]) + [branch])
            previous = op
        current = None

    while i < end:
        c = q[i]
        if c == "(":
            close = _closing(q, i + 1, end, "(", ")")
            if close is None:  # never closed: the parenthesis is ignored
                i += 1
            else:
                if close == i + 1:
                    current = None
                else:
                    add(_parse(q, i + 1, close))
                i = close + 1
        elif c == '"':
            close = _closing(q, i + 1, end, None, '"')
            if close is None:  # never closed: the quote is ignored, what follows is read as terms
                i += 1
            elif close == i + 1:
                current, i = None, close + 1
            else:
                tokens = tokenize(_unescape(q[i + 1 : close]))
                # consumePhrase: `"..."~N` is a slop, `"..."~` at the very end is none
                slop, i = (
                    _edits(q, close + 1, end) if q.startswith("~", close + 1) and close + 2 < end else (0, close + 1)
                )
                add(("phrase", tokens, slop) if tokens else None)
        elif c in "+|":
            if current is None and top is not None:
                current = "and" if c == "+" else "or"
            i += 1
        elif c == "-":
            nots += 1
            i += 1
            continue
        elif c in " \t\n\r":
            i += 1
        else:
            branch, i = _token(q, i, end)
            add(branch)
        nots = 0
    return top


def _closing(q: str, i: int, end: int, opening, closing) -> int | None:
    """Index of the closing character for the one before i (nesting for parentheses, escapes skipped)."""
    depth, escaped = 1, False
    while i < end:
        if not escaped:
            if q[i] == "\\":
                escaped = True
                i += 1
                continue
            if q[i] == opening:
                depth += 1
            elif q[i] == closing:
                depth -= 1
                if depth == 0:
                    return i
        escaped = False
        i += 1
    return None


def _unescape(text_value: str) -> str:
    return re.sub(r"\\(.)", r"\1", text_value)


def _edits(q: str, i: int, end: int) -> tuple[int, int]:
    """parseFuzziness at the `~` at i: (the number after it, 2 when none, 0 when unreadable), and where it ends."""
    j = i + 1
    while j < end and q[j] not in _TOKEN_ENDS:
        j += 1
    digits = q[i + 1 : j]
    try:
        edits = int(digits) if digits else 2
    except ValueError:
        edits = 0
    return max(edits, 0), j


def _token(q: str, i: int, end: int) -> tuple:
    """consumeToken: a term (analyzed), a prefix `term*` or a fuzzy `term~N` (normalized, not analyzed)."""
    chars, escaped, prefix, fuzzy = [], False, False, False
    while i < end:
        c = q[i]
        if not escaped:
            if c == "\\":
                escaped, prefix = True, False
                i += 1
                continue
            if c in _TOKEN_ENDS:
                break
            if chars and c == "~":
                fuzzy = True
                break
            prefix = bool(chars) and c == "*"
        escaped = False
        chars.append(c)
        i += 1
    word = "".join(chars)
    if fuzzy:
        edits, i = _edits(q, i, end)
        edits = min(edits, 2)  # LevenshteinAutomata.MAXIMUM_SUPPORTED_DISTANCE
        if edits:
            return ("fuzzy", word.lower(), edits), i
    elif prefix:
        return ("prefix", word[:-1].lower()), i
    tokens = tokenize(word)
    return (("terms", tokens) if tokens else None), i


def _phrase_in(tokens: list[str], phrase: list[str], slop: int) -> bool:
    """A sloppy phrase (Lucene's SloppyPhraseMatcher): each term at its own position p_k, and the spread of
    p_k - k at most `slop` (0: consecutive, in order)."""
    n = len(phrase)
    if slop == 0:
        return any(tokens[i : i + n] == phrase for i in range(len(tokens) - n + 1))
    where = [[p for p, t in enumerate(tokens) if t == term] for term in phrase]
    if not all(where):
        return False
    for start in where[0]:  # anchored on each place of the first term: the others within reach
        shifted = [[p - k for p in places if abs(p - k - start) <= slop] for k, places in enumerate(where)]
        if not all(shifted):
            continue
        for choice in itertools.islice(itertools.product(*[sorted(set(s)) for s in shifted]), 10_000):
            positions = [c + k for k, c in enumerate(choice)]
            if len(set(positions)) == n and max(choice) - min(choice) <= slop:
                return True
    return False


def query_matches(node, doc: dict[str, list[str]]) -> bool:
    """Does a record (field -> its tokens) match the query tree? A term, phrase, prefix or fuzzy term is
    looked for in each field (ES: one query per field, most_fields), so all tokens of one term are in one."""
    kind = node[0]
    if kind == "and":
        return all(query_matches(n, doc) for n in node[1])
    if kind == "or":
        return any(query_matches(n, doc) for n in node[1])
    if kind == "not":
        return not query_matches(node[1], doc)
    if kind == "all":
        return True
    if kind == "terms":
        return any(all(t in tokens for t in node[1]) for tokens in doc.values())
    if kind == "phrase":
        return any(_phrase_in(tokens, node[1], node[2]) for tokens in doc.values())
    if kind == "prefix":
        return any(tok.startswith(node[1]) for tokens in doc.values() for tok in tokens)
    if len(node) > 3:  # expanded over the index's terms (expand_fuzzy)
        return any(node[3].get(name, frozenset()).intersection(tokens) for name, tokens in doc.items())
    pattern = _fuzzy_pattern(node[1], node[2])
    return any(pattern.fullmatch(tok) for tokens in doc.values() for tok in set(tokens))


@functools.lru_cache(maxsize=256)
def _fuzzy_pattern(text_value: str, edits: int):
    """Tokens within `edits` Levenshtein edits (no transpositions), compiled once per query, not once per record.
    BESTMATCH, so that a match's fuzzy_counts are the fewest edits."""
    return regex.compile(f"(?e)(?:{regex.escape(text_value)}){{e<={edits}}}")


def _has_fuzzy(node) -> bool:
    if node[0] in ("and", "or"):
        return any(_has_fuzzy(child) for child in node[1])
    return _has_fuzzy(node[1]) if node[0] == "not" else node[0] == "fuzzy"


def expand_fuzzy(node, stats: dict[str, "FieldStats"], max_expansions: int = 10):
    """The query with each fuzzy term bound, per field, to the index terms it stands for: as Lucene's FuzzyQuery
    with fuzzy_max_expansions 10 (commons.py:119), the `max_expansions` terms of the field nearest to it (boost
    1 - edits / min(length of either)), the alphabetically first among equals (TopTermsRewrite's order)."""
    kind = node[0]
    if kind in ("and", "or"):
        return (kind, [expand_fuzzy(child, stats, max_expansions) for child in node[1]])
    if kind == "not":
        return ("not", expand_fuzzy(node[1], stats, max_expansions))
    if kind != "fuzzy":
        return node
    pattern, length = _fuzzy_pattern(node[1], node[2]), len(node[1])
    expanded = {}
    for name, field in stats.items():
        near = []
        for term in field.df:
            found = pattern.fullmatch(term)
            if found:
                edits = sum(found.fuzzy_counts)
                near.append((-(1.0 if edits == 0 else 1 - edits / min(len(term), length)), term))
        expanded[name] = frozenset(term for _, term in sorted(near)[:max_expansions])
    return (*node[:3], expanded)


def _required_terms(node) -> list[str]:
    """Text every match contains (a SQL LIKE prefilter): the terms and prefixes of an `and` of them."""
    if node[0] == "and":
        return list(dict.fromkeys(t for n in node[1] for t in _required_terms(n)))
    if node[0] in ("terms", "phrase"):
        return [t for t in node[1] if t.isascii()]
    if node[0] == "prefix" and node[1].isascii():
        return [node[1]] if node[1] else []
    return []


def _field_text(field_type: str, value: Any) -> str:
    if value is None:
        return ""
    if field_type == "chat" and isinstance(value, list):
        return " ".join(f"{m.get('role', '')} {m.get('content', '')}" for m in value if isinstance(m, dict))
    if field_type == "image":
        return ""
    return value if isinstance(value, str) else str(value)


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


# ---------------------------------------------------------------- the engine


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


class _Context:
    """What one query needs to know about its dataset, loaded once per call."""

    def __init__(self, conn, dataset):
        self.conn = conn
        self.d = _dialect(conn)
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


def _as_number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _values_condition(flt, txt, num, numeric: bool = False):
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


async def _where(ctx: _Context, flt) -> Any:
    """A SQL condition on `records` for an engine filter (mirrors build_elasticsearch_filter)."""
    if isinstance(flt, AndFilter):
        return and_(true(), *[await _where(ctx, f) for f in flt.filters])
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
        return exists(base.select_from(Suggestion, je).where(_values_condition(flt, txt, num, numeric)))

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
                    _values_condition(flt, txt, num, question["type"] == "rating"),
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


async def _sort_key(ctx: _Context, order) -> Any:
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


def _sortable(value) -> tuple:
    """A sort key that never compares a number with a text (a Python sort would raise): numbers first."""
    return (0, value, "") if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, 0, str(value))


def _order_by(keys: list, sort: list) -> list:
    clauses = []
    for key, order in zip(keys, sort, strict=True):
        clauses += [key.is_(None), key.desc() if order.order == SortOrder.desc else key.asc()]
    return clauses


def _split_pending_user(flt) -> tuple:
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


def _answered_by(user_id):
    return exists(select(literal(1)).where(Response.record_id == Record.id, Response.user_id == user_id))


async def _count(conn, where_a, pending_user) -> int:
    """Matches of where_a, less those the user answered: |A and not E| = |A| - |A and E|, counted from the
    user's responses instead of probing every record."""
    total = (await conn.execute(select(func.count()).select_from(Record).where(where_a))).scalar()
    if pending_user is not None:
        answered = select(Response.record_id).where(Response.user_id == pending_user)
        total -= (
            await conn.execute(select(func.count()).select_from(Record).where(where_a, Record.id.in_(answered)))
        ).scalar()
    return total


_stats_cache: dict[Any, tuple] = {}  # dataset id -> (fingerprint, field -> FieldStats)


async def _dataset_stats(ctx: _Context) -> dict[str, FieldStats]:
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
        count_fields(
            stats, {name: tokenize(_field_text(kind, (row.fields or {}).get(name))) for name, kind in searched}
        )
    _stats_cache[ctx.dataset_id] = (fingerprint, stats)
    return stats


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
            d = _dialect(conn)
            je, txt, num = d.elems(Record.metadata_, metadata_property.name)
            base = select().select_from(Record, je).where(Record.dataset_id == metadata_property.dataset_id)
            if metadata_property.type == MetadataPropertyType.terms:
                total = (await conn.execute(base.add_columns(func.count()).where(txt.is_not(None)))).scalar() or 0
                if total == 0:
                    return TermsMetrics(total=0)
                count = func.count(func.distinct(Record.id))
                rows = (
                    await conn.execute(
                        base.add_columns(txt.label("term"), count.label("n"))
                        .where(txt.is_not(None))
                        .group_by(txt)
                        .order_by(count.desc(), txt.asc())
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
            ctx = _Context(conn, dataset)
            keys = [await _sort_key(ctx, order) for order in sort or []]
            seed = f"{user_id}:{dataset.id}" if user_id else None
            if query is not None:  # a blank text matches nothing, as in ES
                where = and_(Record.dataset_id == dataset.id, await _where(ctx, filter) if filter else true())
                return await self._text_search(ctx, query, where, keys, sort or [], seed, offset, limit)

            pending_user, others = _split_pending_user(filter)
            where_a = and_(Record.dataset_id == dataset.id, *[await _where(ctx, f) for f in others])
            where = and_(where_a, ~_answered_by(pending_user)) if pending_user else where_a
            if seed and not sort:
                order_by = [ctx.d.rank(seed), Record.id]
            else:
                order_by = _order_by(keys, sort or []) + [Record.inserted_at.asc(), Record.id.asc()]
            ids = (
                (await conn.execute(select(Record.id).where(where).order_by(*order_by).offset(offset).limit(limit)))
                .scalars()
                .all()
            )
            total = await _count(conn, where_a, pending_user)
        return SearchResponses(
            items=[SearchResponseItem(record_id=rid, score=None if sort else 1.0) for rid in ids], total=total
        )

    async def _text_matches(self, ctx: _Context, query: TextQuery, where, extra_columns=()) -> tuple:
        """Rows of records matching `where` and the text query, with their BM25 scores."""
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
        if _has_fuzzy(node):
            node = expand_fuzzy(node, await _dataset_stats(ctx))
        if query.field:
            haystack = (
                ctx.d.json_text(ctx.d.field_text(Record.fields, query.field))
                if fields[query.field] == "chat"
                else ctx.d.field_text(Record.fields, query.field)
            )
        else:
            haystack = ctx.d.json_text(Record.fields)
        prefilter = [haystack.icontains(term, autoescape=True) for term in _required_terms(node)]
        rows = (
            await ctx.conn.execute(
                select(Record.id, Record.fields, Record.inserted_at, *extra_columns).where(where, *prefilter)
            )
        ).all()

        matched = []
        for row in rows:
            doc = {name: tokenize(_field_text(kind, (row.fields or {}).get(name))) for name, kind in searched.items()}
            if query_matches(node, doc):
                matched.append((row, doc))
        if not matched:
            return [], {}
        stats = await _dataset_stats(ctx)
        return [row for row, _ in matched], {row.id: score(node, doc, stats) or 1.0 for row, doc in matched}

    async def _text_search(self, ctx, query, where, keys, sort, seed, offset, limit) -> SearchResponses:
        extra = [key.label(f"k{i}") for i, key in enumerate(keys)]
        rows, scores = await self._text_matches(ctx, query, where, extra)
        if seed:
            scores = {rid: s * _rank(seed, rid.hex) for rid, s in scores.items()}  # random_score multiplies
        rows = sorted(rows, key=lambda r: (r.inserted_at, str(r.id)))
        if sort:
            for i, order in reversed(list(enumerate(sort))):
                present = [r for r in rows if getattr(r, f"k{i}") is not None]
                missing = [r for r in rows if getattr(r, f"k{i}") is None]
                present.sort(key=lambda r: _sortable(getattr(r, f"k{i}")), reverse=order.order == SortOrder.desc)
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
        count, newest = (
            await conn.execute(
                select(func.count(), func.max(Vector.updated_at)).where(Vector.vector_settings_id == key)
            )
        ).one()
        cached = self._vector_cache.get(key)
        if cached and cached["count"] == count and cached["newest"] == newest:
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
            "count": count,
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
                ctx = _Context(conn, dataset)
                where = and_(Record.dataset_id == dataset.id, await _where(ctx, filter) if filter else true())
                if query is not None:
                    rows, _ = await self._text_matches(ctx, query, where)
                    allowed = [r.id for r in rows]
                else:
                    allowed = (await conn.execute(select(Record.id).where(where))).scalars().all()
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
