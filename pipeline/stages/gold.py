"""Gold pairs: human-labeled preference pairs, the yardstick that judges and annotators are measured on.

A gold file is TRL preference data (`prompt`, `chosen`, `rejected`; the prompt as text or a chat, each
response as text or a one-message assistant list), in JSONL, CSV or Parquet, with columns mapped as in
ingest and an optional source or category column. Every bad row is an error naming file, line and field.
"""

from pathlib import Path

import polars as pl

from pipeline.core import schema
from pipeline.core.config import CalibrateConfig, IngestConfig
from pipeline.core.errors import InputError
from pipeline.core.prompts import BadRow
from pipeline.core.store import content_id, normalize_messages
from pipeline.stages.ingest import expand_paths, read_source, to_prompt


def response_text(value, field: str) -> str:
    """A response as TRL writes it: text, or a list ending in the assistant's message."""
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        if value[-1].get("role") != "assistant":
            raise BadRow(f"{field}[{len(value) - 1}].role", "the last message of a response must be the assistant's")
        value = value[-1].get("content")
    if value is None:  # an empty CSV field, a JSON null
        raise BadRow(field, "empty response")
    if not isinstance(value, str):
        raise BadRow(
            field, f"expected text or a list of messages ending in the assistant's, got {type(value).__name__}"
        )
    if not value.strip():
        raise BadRow(field, "empty response")
    return value.strip()


def gold_row(record: dict, cfg: CalibrateConfig, ingest_cfg: IngestConfig) -> dict:
    prompt = to_prompt(record, ingest_cfg)  # text, or a chat (conversational TRL)
    for col in (cfg.chosen_column, cfg.rejected_column):
        if col not in record:
            raise BadRow(col, f"missing column {col!r} (found {', '.join(map(str, record))})")
    chosen = response_text(record[cfg.chosen_column], cfg.chosen_column)
    rejected = response_text(record[cfg.rejected_column], cfg.rejected_column)
    if " ".join(chosen.split()) == " ".join(rejected.split()):
        raise BadRow(
            cfg.rejected_column, "chosen and rejected are the same text: a gold pair needs two different responses"
        )
    source_col = cfg.source_column or "source"
    if cfg.source_column and source_col not in record:
        raise BadRow(source_col, f"missing column {source_col!r}")
    return {
        "gold_id": content_id("gold", normalize_messages(prompt["messages"]), chosen, rejected),
        "messages": prompt["messages"],
        "chosen": chosen,
        "rejected": rejected,
        "source": str(record[source_col]) if record.get(source_col) is not None else None,
        "category": prompt["category"],
    }


def read_gold(cfg: CalibrateConfig, resolve=Path) -> pl.DataFrame:
    """The `gold` table from the configured files; InputError at the first bad row, or for no pairs at all."""
    ingest_cfg = IngestConfig(
        paths=cfg.gold,
        format=cfg.format,
        prompt_column=cfg.prompt_column,
        messages_column=cfg.messages_column,
        category_column=cfg.category_column,
    )
    rows: dict[str, dict] = {}
    try:
        sources = expand_paths(ingest_cfg, resolve)
    except InputError as e:
        raise InputError(
            e.message, where="calibrate.gold", hint="list gold files (TRL preference JSONL: prompt, chosen, rejected)"
        ) from None
    for path in sources:
        found = []
        for line, record in read_source(path, ingest_cfg):
            try:
                if isinstance(record, BadRow):
                    raise record
                row = gold_row(record, cfg, ingest_cfg)
            except BadRow as e:
                raise InputError(
                    f"{e.field}: {e}",
                    where=f"{path}:{line}",
                    hint="a gold pair needs `prompt`, `chosen` (the response people preferred) and `rejected`; "
                    "map other names with prompt_column/chosen_column/rejected_column",
                ) from None
            found.append(row | {"source": row["source"] or Path(str(path)).stem, "file": str(path), "line": line})
        if cfg.limit and len(found) > cfg.limit:
            found = sorted(found, key=lambda r: content_id("gold-sample", cfg.seed, r["gold_id"]))[: cfg.limit]
        for row in found:
            rows.setdefault(row["gold_id"], row)  # the same pair twice counts once
    if not rows:
        raise InputError("no gold pairs were read", where=", ".join(cfg.gold), hint="check the paths and column names")
    return pl.DataFrame(list(rows.values()), schema=schema.TABLES["gold"])
