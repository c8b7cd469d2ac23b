"""Ingest: prompts from JSONL, CSV, Parquet or Hugging Face datasets into the `prompts` table.

A prompt is plain text or a chat. Every bad row is reported with file, line and field; with
`skip_bad_rows` it is recorded in `bad_rows` instead. Exact duplicates (same normalized messages)
are dropped with a count. A `.json` file may also be one JSON array of records (Alpaca style), each
record named by the line it starts on; a UTF-8 byte-order mark is ignored. A prompt longer than
LARGE_PROMPT_CHARS is kept with a warning naming its file and line: it is more often a whole document
pasted by mistake than a prompt, and it costs tokens on every candidate and judgment.
"""

import csv
import glob
import json
import re
from pathlib import Path

import polars as pl

from pipeline.core import schema
from pipeline.core.config import Config, IngestConfig
from pipeline.core.errors import InputError, unreadable
from pipeline.core.jsonl import json_lines
from pipeline.core.progress import console, summary
from pipeline.core.prompts import BadRow, prompt_messages
from pipeline.core.stage import Stage
from pipeline.core.store import Run, TableParts, normalize_messages, prompt_id
from pipeline.sandbox.bwrap import validate_tests

CATEGORY_COLUMNS = ["category", "topic", "task"]
ANSWER_COLUMNS = [
    "reference_answer",
    "answer",
    "final_answer",
]  # a reference answer the verify stage checks candidates against
TESTS_COLUMNS = ["tests", "test_code", "unit_tests"]  # Python tests the verify stage runs each candidate's code against
LARGE_PROMPT_CHARS = 100_000  # about 25k tokens: above it a prompt is kept with a warning
csv.field_size_limit(
    2**31 - 1
)  # process-wide, set once: the default (128 KiB) would refuse a long prompt; LARGE_PROMPT_CHARS warns instead


PART_ROWS = (
    10_000  # prompts held before they are written as a part of the table: ingest's memory, whatever the input's size
)


def step(config: Config, run: Run) -> dict:
    """Read the sources as a stream, writing the prompts in parts, then the parts as the prompts table."""
    bad: list[dict] = []  # bad_rows rows
    large: list[str] = []  # where the very long prompts are
    counts = {"exact_duplicates_dropped": 0}
    parts = TableParts(run, "prompts")
    parts.clear()  # ingest makes no calls: a killed one starts over
    keys, rows = [], []
    existed = run.path.exists()
    try:
        for row in read_prompts(config.ingest, config.resolve, bad, large, counts):
            rows.append(row)
            if len(rows) == PART_ROWS:
                keys.append("rows")
                parts.write(len(keys) - 1, keys[-1], pl.DataFrame(rows, schema=schema.TABLES["prompts"]))
                rows = []
        checked(config.ingest, large, kept=PART_ROWS * len(keys) + len(rows))
    except BaseException:  # bad input: the run is left as it was
        parts.clear()
        for empty_dir in (run.path / ".parts", *([] if existed else [run.path])):
            if empty_dir.is_dir() and not any(empty_dir.iterdir()):
                empty_dir.rmdir()
        raise
    if rows or not keys:
        keys.append("rows")
        parts.write(len(keys) - 1, keys[-1], pl.DataFrame(rows, schema=schema.TABLES["prompts"]))
    parts.assemble(keys)
    run.write("bad_rows", pl.DataFrame(bad, schema=schema.TABLES["bad_rows"]))
    counts = prompt_counts(run.scan("prompts"), bad, large, counts)
    summary("ingest", counts)
    return counts


def ingest(cfg: IngestConfig, resolve=Path) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """Read every source into memory (`prefab plan`, tests); returns (prompts, bad_rows, counts). Raises InputError
    on the first bad row unless cfg.skip_bad_rows."""
    bad: list[dict] = []
    large: list[str] = []
    counts = {"exact_duplicates_dropped": 0}
    rows = list(read_prompts(cfg, resolve, bad, large, counts))
    checked(cfg, large, kept=len(rows))
    prompts = pl.DataFrame(rows, schema=schema.TABLES["prompts"])
    return (
        prompts,
        pl.DataFrame(bad, schema=schema.TABLES["bad_rows"]),
        prompt_counts(prompts.lazy(), bad, large, counts),
    )


def read_prompts(cfg: IngestConfig, resolve, bad: list[dict], large: list[str], counts: dict):
    """Yield each new prompt row, in input order, up to cfg.limit; exact duplicates are counted in `counts` and
    dropped, bad rows recorded in `bad` (or raised), prompts over LARGE_PROMPT_CHARS named in `large`. Rows past
    the limit are still checked."""
    seen: set[str] = set()
    for source in expand_paths(cfg, resolve):
        for line, record in read_source(source, cfg):
            try:
                if isinstance(record, BadRow):
                    raise record
                row = to_prompt(record, cfg) | {"source": str(source), "source_line": line}
                size = sum(len(m["content"]) for m in row["messages"])
                if size > LARGE_PROMPT_CHARS:
                    large.append(f"{source}:{line} ({size:,} characters)")
            except BadRow as e:
                if not cfg.skip_bad_rows:
                    raise InputError(
                        f"{e.field}: {e}",
                        where=f"{source}:{line}",
                        hint="fix the row, or pass --skip-bad-rows to record bad rows in bad_rows.parquet and go on",
                    ) from None
                bad.append({"source": str(source), "source_line": line, "field": e.field, "error": str(e)})
                continue
            if cfg.limit and len(seen) >= cfg.limit:
                continue
            if row["prompt_id"] in seen:
                counts["exact_duplicates_dropped"] += 1
                continue
            seen.add(row["prompt_id"])
            yield row | {"duplicate_of": None, "cluster": None}


def checked(cfg: IngestConfig, large: list, kept: int) -> None:
    """Warn about very long prompts; refuse an input that gave none."""
    if large:
        console.print(
            f"warning: {len(large)} prompt(s) longer than {LARGE_PROMPT_CHARS:,} characters, kept: "
            f"{'; '.join(large[:3])}{' ...' if len(large) > 3 else ''}. Check they are prompts, not whole documents.",
            style="yellow",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    if not kept:
        raise InputError(
            "no valid prompts were read",
            where=", ".join(cfg.paths),
            hint="check the paths and the prompt/messages column names (prompt_column:, messages_column:)",
        )


def prompt_counts(prompts: pl.LazyFrame, bad: list, large: list, counts: dict) -> dict:
    n, chats, answers, tests = (
        prompts.select(
            pl.len(),
            (pl.col("messages").list.len() > 1).sum(),
            pl.col("reference_answer").is_not_null().sum(),
            pl.col("tests").is_not_null().sum(),
        )
        .collect()
        .row(0)
    )
    return {
        "prompts": n,
        "exact_duplicates_dropped": counts["exact_duplicates_dropped"],
        "bad_rows": len(bad),
        "chats": int(chats),
        "large_prompts": len(large),
        "with_reference_answer": int(answers),
        "with_tests": int(tests),
    }


def expand_paths(cfg: IngestConfig, resolve) -> list[str | Path]:
    out: list[str | Path] = []  # hf:NAME as written, files as paths
    for raw in cfg.paths:
        if raw.startswith("hf:"):
            out.append(raw)
            continue
        path = resolve(raw)
        matches = sorted(glob.glob(str(path))) if any(c in raw for c in "*?[") else [str(path)] if path.exists() else []
        if not matches:
            raise InputError(
                f"input {raw!r} does not exist",
                where="ingest.paths",
                hint="give a JSONL/CSV/Parquet file, a glob, a saved HF dataset directory, or hf:NAME",
            )
        out.extend(Path(m) for m in matches)
    return out


def read_source(source, cfg: IngestConfig):
    """Yield (line_or_row_number, record dict or BadRow) for one source."""
    fmt = cfg.format if cfg.format != "auto" else detect_format(source)
    try:
        if fmt == "jsonl":
            yield from read_json(source)
        elif fmt == "csv":
            yield from read_csv(source)
        elif fmt == "parquet":
            yield from read_parquet(source)
        else:
            yield from read_hf(source, cfg)
    except OSError as e:  # permissions, a directory named like a file: the user's to fix
        raise unreadable(source, e) from None


def detect_format(source) -> str:
    if isinstance(source, str) or source.is_dir():
        return "hf"
    suffix = source.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise InputError(
        f"cannot tell the format of {source} from its extension",
        where="ingest.paths",
        hint="use .jsonl, .csv or .parquet, or set `format:` in the ingest section",
    )


def read_json(path: Path):
    """JSON Lines, or a file that is one JSON array of records (each named by the line it starts on)."""
    with open(path, "rb") as f:
        starts_with_bracket = f.read(4096).decode("utf-8", "ignore").lstrip("\ufeff \t\r\n").startswith("[")
    items = read_json_array(path) if starts_with_bracket else None
    if items is None:
        yield from read_jsonl(path)
        return
    for line, record in items:
        if not isinstance(record, dict):
            record = BadRow("record", f"expected a JSON object, got {type(record).__name__}")
        yield line, record


def read_json_array(path: Path) -> list[tuple[int, object]] | None:
    """(line, item) for each item of a file holding one JSON array; None when it is JSON Lines after all
    (each line a value of its own, e.g. `[1, 2]`)."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise InputError(
            f"invalid UTF-8 at byte {e.start}", where=f"{path}:{line}", hint="re-save the file as UTF-8"
        ) from None
    try:
        json.loads(text)
    except json.JSONDecodeError as e:
        try:
            json.loads(text.split("\n", 1)[0])
            return None
        except json.JSONDecodeError:
            raise InputError(
                f"malformed JSON array: {e.msg} at column {e.colno}",
                where=f"{path}:{e.lineno}",
                hint=f"fix the JSON at that line; or convert the array to JSON Lines, one record a line: "
                f"jq -c '.[]' {path} > {Path(path).with_suffix('.jsonl')}",
            ) from None
    decoder, gap = json.JSONDecoder(), re.compile(r"[\s,]*")

    def after_gap(at: int) -> int:
        found = gap.match(text, at)
        assert found is not None  # [\s,]* matches anywhere, if only the empty string
        return found.end()

    out, line, last = [], 1, 0
    i = after_gap(text.index("[") + 1)
    while text[i] != "]":
        item, end = decoder.raw_decode(text, i)
        line, last = line + text.count("\n", last, i), i
        out.append((line, item))
        i = after_gap(end)
    return out


def read_jsonl(path: Path):
    for number, record, problem in json_lines(path):
        if problem is None and not isinstance(record, dict):
            problem = f"expected a JSON object, got {type(record).__name__}"
        yield number, BadRow("line", problem) if problem else record


def read_csv(path: Path):
    """CSV (TSV by extension) with the physical line each row starts on: a quoted field may span lines."""
    check_utf8(path)
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        try:
            header = next(reader, None)
            if header is None:
                return
            start = reader.line_num + 1
            for values in reader:
                if values:  # a blank line is no row
                    if len(values) != len(header):
                        yield (
                            start,
                            BadRow(
                                "line",
                                f"{len(values)} fields, but the header has {len(header)} "
                                "(quote a field that holds the separator)",
                            ),
                        )
                    else:
                        yield start, {k: v if v != "" else None for k, v in zip(header, values, strict=True)}
                start = reader.line_num + 1
        except csv.Error as e:
            raise InputError(
                f"malformed CSV: {e}",
                where=f"{path}:{reader.line_num}",
                hint="check the quoting on that line: a field with a quote, comma or line break is "
                "written in double quotes, with inner quotes doubled",
            ) from None


def read_parquet(path: Path):
    try:
        df = pl.read_parquet(path)
    except OSError:  # the file could not be opened: read_source says so
        raise
    except Exception as e:  # polars raises several types for unreadable files
        raise InputError(f"cannot read {path.suffix} file: {str(e).splitlines()[0]}", where=str(path)) from None
    for i, record in enumerate(df.iter_rows(named=True)):
        yield i + 1, record


def check_utf8(path: Path) -> None:
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(
                    f"invalid UTF-8 at byte {e.start} of the line",
                    where=f"{path}:{number}",
                    hint="re-save the file as UTF-8",
                ) from None


def read_hf(source, cfg: IngestConfig):
    import datasets  # start-up: datasets

    try:
        if isinstance(source, str):
            ds = datasets.load_dataset(source.removeprefix("hf:"), split=cfg.split)
        else:
            ds = datasets.load_from_disk(str(source))
            if isinstance(ds, datasets.DatasetDict):
                if cfg.split not in ds:
                    raise InputError(
                        f"split {cfg.split!r} not found (have {list(ds)})",
                        where=str(source),
                        hint="set `split:` in the ingest section",
                    )
                ds = ds[cfg.split]
    except InputError:
        raise
    except Exception as e:
        raise InputError(
            f"cannot load dataset: {str(e).splitlines()[0]}",
            where=str(source),
            hint="pass a directory written by Dataset.save_to_disk, or hf:NAME while online",
        ) from None
    for i, record in enumerate(ds):
        yield i + 1, record


def to_prompt(record: dict, cfg: IngestConfig) -> dict:
    """One source record -> prompt row fields (prompt_id, messages, category)."""
    messages = prompt_messages(
        record, prompt_column=cfg.prompt_column, messages_column=cfg.messages_column, system_prompt=cfg.system_prompt
    )
    category_col = cfg.category_column or next((c for c in CATEGORY_COLUMNS if c in record), None)
    category = record.get(category_col) if category_col else None
    return {
        "prompt_id": prompt_id(messages),
        "messages": messages,
        "category": str(category) if category is not None else None,
        "reference_answer": reference_answer(record, cfg),
        "tests": code_tests(record, cfg),
    }


def reference_answer(record: dict, cfg: IngestConfig) -> str | None:
    """The row's reference answer as text (a JSON number too), or None: a prompt without one is simply not verified."""
    column = cfg.answer_column or next((c for c in ANSWER_COLUMNS if c in record), None)
    if not column:
        return None
    value = record.get(column)
    if value is None or value != value or (isinstance(value, str) and not value.strip()):  # absent, null, NaN, blank
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise BadRow(
            column,
            f"expected the reference answer as text or a number, got {type(value).__name__} "
            '(write a set or an interval as LaTeX text, e.g. "$\\{1, 2\\}$")',
        )
    return value.strip() if isinstance(value, str) else str(value)


def code_tests(record: dict, cfg: IngestConfig) -> str | None:
    """The row's Python tests (asserts or test_* functions), checked to compile here: a broken test is the input's
    fault, named by its line, not a failure charged to every candidate later."""
    column = cfg.tests_column or next((c for c in TESTS_COLUMNS if c in record), None)
    if not column:
        return None
    value = record.get(column)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        value = "\n".join(value)  # a list of assert lines, as some code datasets keep them
    if not isinstance(value, str):
        raise BadRow(
            column, f"expected the tests as Python text (or a list of assert lines), got {type(value).__name__}"
        )
    try:
        validate_tests(value)
    except InputError as e:
        raise BadRow(column, f"{e.message}; {e.hint}" if e.hint else e.message) from None
    return value


__all__ = ["ingest", "step", "normalize_messages"]


STAGE = Stage(name="ingest", order=10, step=step, section="ingest", settings=IngestConfig, required=True)
