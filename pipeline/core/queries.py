"""Queries over run tables that several stages share, kept apart so that stages import them without
importing each other (dedup and embed, judge and pair)."""

from typing import TypeVar

import polars as pl

Frame = TypeVar("Frame", pl.DataFrame, pl.LazyFrame)


def active_prompts(prompts: Frame) -> Frame:
    """Prompts that go on to generation: not a duplicate, not sampled out."""
    return prompts.filter(pl.col("duplicate_of").is_null() & pl.col("excluded_reason").is_null())


def answered(candidates: pl.LazyFrame) -> pl.LazyFrame:
    """The candidates with a text (judged and embedded): their id, prompt and text."""
    return candidates.filter(pl.col("text").is_not_null()).select("candidate_id", "prompt_id", "text")


def messages_of(prompts: pl.LazyFrame, prompt_ids: pl.Series) -> pl.DataFrame:
    """prompt_id, messages of these prompts alone (a part's lookup: the prompts table is never held whole)."""
    return (
        prompts.select("prompt_id", "messages")
        .filter(pl.col("prompt_id").is_in(prompt_ids.unique().implode()))
        .collect()
    )


def candidate_scores(judgments: pl.DataFrame) -> pl.DataFrame:
    """candidate_id -> score: mean overall over the judges that gave one (null when none did)."""
    return judgments.group_by("candidate_id").agg(
        pl.col("overall").mean().alias("score"), pl.col("overall").null_count().alias("failed_judges")
    )
