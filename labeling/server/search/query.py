"""Text queries: the tokenizer, the query parser, and matching a parsed query against a tokenized record.

ES's standard analyzer (UAX #29 words), Lucene's SimpleQueryParser as simple_query_string runs it, and fuzzy
terms bound to the index's terms."""

import functools
import itertools
import re
from typing import TYPE_CHECKING, Any

import regex

if TYPE_CHECKING:
    from .scoring import FieldStats

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
    return words(value)


def words(value: str) -> list[str]:
    """The general UAX #29 split; tokenize's ASCII fast path must agree with it (a test holds them equal)."""
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


def has_fuzzy(node) -> bool:
    if node[0] in ("and", "or"):
        return any(has_fuzzy(child) for child in node[1])
    return has_fuzzy(node[1]) if node[0] == "not" else node[0] == "fuzzy"


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


def required_terms(node) -> list[str]:
    """Text every match contains (a SQL LIKE prefilter): the terms and prefixes of an `and` of them."""
    if node[0] == "and":
        return list(dict.fromkeys(t for n in node[1] for t in required_terms(n)))
    if node[0] in ("terms", "phrase"):
        return [t for t in node[1] if t.isascii()]
    if node[0] == "prefix" and node[1].isascii():
        return [node[1]] if node[1] else []
    return []


def value_text(field_type: str, value: Any) -> str:
    """The searchable text of a record's field value: a chat's roles and turns, nothing of an image."""
    if value is None:
        return ""
    if field_type == "chat" and isinstance(value, list):
        return " ".join(f"{m.get('role', '')} {m.get('content', '')}" for m in value if isinstance(m, dict))
    if field_type == "image":
        return ""
    return value if isinstance(value, str) else str(value)
