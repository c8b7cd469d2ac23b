"""Ingest: prompts from JSONL, CSV, Parquet or Hugging Face datasets into the `prompts` table.

A prompt is plain text or a chat. Every bad row is reported with file, line and field; with
`skip_bad_rows` it is recorded in `bad_rows` instead. Exact duplicates (same normalized messages)
are dropped with a count.
"""

import glob
import json
from pathlib import Path

import polars as pl

from pipeline import schema
from pipeline.config import Config, IngestConfig
from pipeline.errors import InputError
from pipeline.progress import summary
from pipeline.store import Run, normalize_messages, prompt_id

PROMPT_COLUMNS = ["prompt", "instruction", "question", "text", "input"]
MESSAGES_COLUMNS = ["messages", "conversation", "conversations"]
CATEGORY_COLUMNS = ["category", "topic", "task"]
ROLE_ALIASES = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant"}


class BadRow(Exception):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def step(config: Config, run: Run) -> dict:
    prompts, bad, counts = ingest(config.ingest, resolve=config.resolve)
    run.write("prompts", prompts)
    run.write("bad_rows", bad)
    summary("ingest", counts)
    return counts


def ingest(cfg: IngestConfig, resolve=Path) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """Read every source; returns (prompts, bad_rows, counts). Raises InputError on the first bad row
    unless cfg.skip_bad_rows."""
    rows, bad = [], []
    for source in expand_paths(cfg, resolve):
        for line, record in read_source(source, cfg):
            try:
                if isinstance(record, BadRow):
                    raise record
                rows.append(to_prompt(record, cfg) | {"source": str(source), "source_line": line})
            except BadRow as e:
                if not cfg.skip_bad_rows:
                    raise InputError(f"{e.field}: {e}", where=f"{source}:{line}",
                                     hint="fix the row, or pass --skip-bad-rows to record bad rows in bad_rows.parquet and go on") from None
                bad.append({"source": str(source), "source_line": line, "field": e.field, "error": str(e)})
    seen: dict[str, dict] = {}
    duplicates = 0
    for row in rows:
        if row["prompt_id"] in seen:
            duplicates += 1
            continue
        seen[row["prompt_id"]] = row
        if cfg.limit and len(seen) >= cfg.limit:
            break
    if not seen:
        raise InputError("no valid prompts were read", where=", ".join(cfg.paths),
                         hint="check the paths and the prompt/messages column names (prompt_column:, messages_column:)")
    prompts = pl.DataFrame(
        [r | {"duplicate_of": None, "cluster": None} for r in seen.values()], schema=schema.TABLES["prompts"]
    )
    bad_rows = pl.DataFrame(bad, schema=schema.TABLES["bad_rows"])
    counts = {"prompts": prompts.height, "exact_duplicates_dropped": duplicates, "bad_rows": len(bad),
              "chats": int((prompts["messages"].list.len() > 1).sum())}
    return prompts, bad_rows, counts


def expand_paths(cfg: IngestConfig, resolve) -> list:
    out = []
    for raw in cfg.paths:
        if raw.startswith("hf:"):
            out.append(raw)
            continue
        path = resolve(raw)
        matches = sorted(glob.glob(str(path))) if any(c in raw for c in "*?[") else [str(path)] if path.exists() else []
        if not matches:
            raise InputError(f"input {raw!r} does not exist", where="ingest.paths",
                             hint="give a JSONL/CSV/Parquet file, a glob, a saved HF dataset directory, or hf:NAME")
        out.extend(Path(m) for m in matches)
    return out


def read_source(source, cfg: IngestConfig):
    """Yield (line_or_row_number, record dict or BadRow) for one source."""
    fmt = cfg.format if cfg.format != "auto" else detect_format(source)
    if fmt == "jsonl":
        yield from read_jsonl(source)
    elif fmt == "csv":
        yield from read_table(source, lambda p: pl.read_csv(p, infer_schema=False), first_line=2)
    elif fmt == "parquet":
        yield from read_table(source, pl.read_parquet, first_line=1)
    else:
        yield from read_hf(source, cfg)


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
    raise InputError(f"cannot tell the format of {source} from its extension", where="ingest.paths",
                     hint="use .jsonl, .csv or .parquet, or set `format:` in the ingest section")


def read_jsonl(path: Path):
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield number, BadRow("line", f"invalid UTF-8 at byte {e.start} of the line")
                continue
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                yield number, BadRow("line", f"malformed JSON: {e.msg} at column {e.colno}")
                continue
            if not isinstance(record, dict):
                yield number, BadRow("line", f"expected a JSON object, got {type(record).__name__}")
                continue
            yield number, record


def read_table(path: Path, reader, first_line: int):
    check_utf8(path)
    try:
        df = reader(path)
    except Exception as e:  # polars raises several types for unreadable files
        raise InputError(f"cannot read {path.suffix} file: {str(e).splitlines()[0]}", where=str(path)) from None
    for i, record in enumerate(df.iter_rows(named=True)):
        yield i + first_line, record


def check_utf8(path: Path) -> None:
    if path.suffix.lower() not in (".csv", ".tsv"):
        return
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"invalid UTF-8 at byte {e.start} of the line", where=f"{path}:{number}",
                                 hint="re-save the file as UTF-8") from None


def read_hf(source, cfg: IngestConfig):
    import datasets

    try:
        if isinstance(source, str):
            ds = datasets.load_dataset(source.removeprefix("hf:"), split=cfg.split)
        else:
            ds = datasets.load_from_disk(str(source))
            if isinstance(ds, datasets.DatasetDict):
                if cfg.split not in ds:
                    raise InputError(f"split {cfg.split!r} not found (have {list(ds)})", where=str(source), hint="set `split:` in the ingest section")
                ds = ds[cfg.split]
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"cannot load dataset: {str(e).splitlines()[0]}", where=str(source),
                         hint="pass a directory written by Dataset.save_to_disk, or hf:NAME while online") from None
    for i, record in enumerate(ds):
        yield i + 1, record


def to_prompt(record: dict, cfg: IngestConfig) -> dict:
    """One source record -> prompt row fields (prompt_id, messages, category)."""
    messages_col = cfg.messages_column or next((c for c in MESSAGES_COLUMNS if c in record), None)
    prompt_col = cfg.prompt_column or next((c for c in PROMPT_COLUMNS if c in record), None)
    if messages_col and messages_col in record and record[messages_col] is not None:
        messages = parse_messages(record[messages_col], messages_col)
    elif prompt_col and prompt_col in record:
        text = record[prompt_col]
        if not isinstance(text, str):
            raise BadRow(prompt_col, f"expected text, got {type(text).__name__}")
        messages = [{"role": "user", "content": text}]
    else:
        wanted = cfg.messages_column or cfg.prompt_column
        raise BadRow(wanted or "prompt",
                     f"missing column {wanted!r}" if wanted else
                     f"no prompt column (looked for {', '.join(PROMPT_COLUMNS + MESSAGES_COLUMNS)}; found {', '.join(map(str, record))})")
    if cfg.system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": cfg.system_prompt}] + messages
    check_chat(messages, messages_col if len(messages) > 1 else prompt_col)
    category_col = cfg.category_column or next((c for c in CATEGORY_COLUMNS if c in record), None)
    category = record.get(category_col) if category_col else None
    return {"prompt_id": prompt_id(messages), "messages": normalize_roles(messages),
            "category": str(category) if category is not None else None}


def parse_messages(value, field: str) -> list[dict]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise BadRow(field, "expected a list of {role, content} messages (or its JSON text)") from None
    if not isinstance(value, list) or not value:
        raise BadRow(field, "expected a non-empty list of {role, content} messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise BadRow(f"{field}[{i}]", "expected an object with role and content")
        role = m.get("role", m.get("from"))
        content = m.get("content", m.get("value"))
        if not isinstance(role, str) or not isinstance(content, str):
            raise BadRow(f"{field}[{i}]", "each message needs string `role` and `content`")
        out.append({"role": ROLE_ALIASES.get(role, role), "content": content})
    return out


def check_chat(messages: list[dict], field: str | None) -> None:
    """System first (optional), then user/assistant alternating, ending with the user's turn."""
    field = field or "messages"
    turns = messages[1:] if messages[0]["role"] == "system" else messages
    for i, m in enumerate(messages):
        if m["role"] not in ("system", "user", "assistant"):
            raise BadRow(f"{field}[{i}].role", f"unknown role {m['role']!r}; use system, user or assistant")
        if not m["content"].strip():
            raise BadRow(f"{field}[{i}].content" if len(messages) > 1 else field, "empty prompt")
    if not turns:
        raise BadRow(field, "chat has only a system message; add a user turn")
    offset = len(messages) - len(turns)
    for i, m in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise BadRow(f"{field}[{i + offset}].role",
                         f"invalid role order: expected {expected!r} at turn {i + offset}, got {m['role']!r} "
                         "(chats go [system], user, assistant, user, ...)")
    if turns[-1]["role"] != "user":
        raise BadRow(f"{field}[{len(messages) - 1}].role", "a chat must end with a user turn for the model to answer")


def normalize_roles(messages: list[dict]) -> list[dict]:
    return [{"role": m["role"], "content": m["content"].strip()} for m in messages]


__all__ = ["ingest", "step", "normalize_messages"]
