"""Prompt and response lengths, in tokens as the trainer will see them or in characters, and prompts rendered as
text by a tokenizer's chat template."""

import polars as pl

from pipeline.core.errors import ExportError
from training.settings import ExportConfig


def needs_tokenizer(config: ExportConfig) -> bool:
    """Token counts cost a transformers import and a tokenizer load (seconds, most of an export): only when
    asked for, by a token limit, a named tokenizer, or plain-string prompts rendered with its chat template."""
    return bool(config.max_tokens or config.tokenizer or not config.conversational)


def char_lengths(df: pl.DataFrame) -> pl.DataFrame:
    """prompt/chosen/rejected lengths in characters: the card's lengths when tokens were not counted."""
    prompt = pl.col("messages").list.eval(pl.element().struct.field("content").str.len_chars()).list.sum()
    return df.with_columns(
        prompt_chars=prompt.cast(pl.Int64),
        chosen_chars=pl.col("chosen").str.len_chars().cast(pl.Int64),
        rejected_chars=pl.col("rejected").str.len_chars().cast(pl.Int64),
    )


def render_prompt(tokenizer, messages: list[dict]) -> str:
    if not tokenizer.chat_template:
        raise ExportError(
            f"tokenizer {tokenizer.name_or_path} has no chat template, so prompts cannot be rendered as text",
            hint="name a chat model's tokenizer with --tokenizer, or export conversational files (the default)",
        )
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def token_lengths(df: pl.DataFrame, tokenizer) -> pl.DataFrame:
    """prompt/chosen/rejected token counts as the trainer will see them (chat template, end-of-turn)."""
    if tokenizer.chat_template:
        prompts = [render_prompt(tokenizer, m) for m in df["messages"].to_list()]
    else:
        prompts = ["\n".join(x["content"] for x in m) for m in df["messages"].to_list()]

    def count(texts):
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []

    return df.with_columns(
        prompt_tokens=pl.Series(count(prompts), dtype=pl.Int64),
        chosen_tokens=pl.Series(count(df["chosen"].to_list()), dtype=pl.Int64) + 1,
        rejected_tokens=pl.Series(count(df["rejected"].to_list()), dtype=pl.Int64) + 1,
    )
