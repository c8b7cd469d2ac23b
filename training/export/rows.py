"""Each format's lines from the selected pairs: TRL and OpenAI DPO, SFT (chat and prompt-completion), KTO and GRPO,
as file name -> (rows, the line model of training/formats.py that validates them)."""

import math

import polars as pl

from pipeline.core.queries import active_prompts
from pipeline.core.store import Run
from training import formats
from training.export.selection import split_by_prompt
from training.export.tokens import render_prompt
from training.settings import ExportConfig

# format -> file stem(s); each gets _train.jsonl and _test.jsonl
FILES = {
    "trl-dpo": ["dpo"],
    "openai-dpo": ["openai_dpo"],
    "sft": ["sft", "sft_pc"],  # chat messages; prompt/completion
    "kto": ["kto"],  # unpaired: prompt, completion, label
    "grpo": ["grpo"],  # prompts with the verifier's ground truth, for online RL
}


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def _meta(row: dict) -> dict:
    return {"pair_id": row["pair_id"], "prompt_id": row["prompt_id"], "source": row["source"]}


def _messages(row: dict) -> list[dict]:
    return [{"role": m["role"], "content": m["content"]} for m in row["messages"]]


def dpo_rows(df: pl.DataFrame, conversational: bool, tokenizer) -> list[dict]:
    if conversational:
        return [
            {
                "prompt": _messages(r),
                "chosen": _assistant(r["chosen"]),
                "rejected": _assistant(r["rejected"]),
                **_meta(r),
            }
            for r in df.iter_rows(named=True)
        ]
    return [
        {"prompt": render_prompt(tokenizer, _messages(r)), "chosen": r["chosen"], "rejected": r["rejected"], **_meta(r)}
        for r in df.iter_rows(named=True)
    ]


def openai_rows(df: pl.DataFrame) -> list[dict]:
    return [
        {
            "input": {"messages": _messages(r), "tools": [], "parallel_tool_calls": True},
            "preferred_output": _assistant(r["chosen"]),
            "non_preferred_output": _assistant(r["rejected"]),
        }
        for r in df.iter_rows(named=True)
    ]


def best_responses(df: pl.DataFrame) -> pl.DataFrame:
    """One row per prompt: the human-chosen response where labeled, else the best-scored chosen one."""
    return df.sort(
        [pl.col("source") != "human", pl.col("chosen_score").fill_null(-math.inf)], descending=[False, True]
    ).unique("prompt_id", keep="first", maintain_order=True)


def sft_rows(df: pl.DataFrame) -> list[dict]:
    return [
        {"messages": _messages(r) + _assistant(r["chosen"]), "prompt_id": r["prompt_id"], "source": r["source"]}
        for r in best_responses(df).iter_rows(named=True)
    ]


def sft_pc_rows(df: pl.DataFrame, conversational: bool, tokenizer) -> list[dict]:
    rows = best_responses(df).iter_rows(named=True)
    if conversational:
        return [
            {
                "prompt": _messages(r),
                "completion": _assistant(r["chosen"]),
                "prompt_id": r["prompt_id"],
                "source": r["source"],
            }
            for r in rows
        ]
    return [
        {
            "prompt": render_prompt(tokenizer, _messages(r)),
            "completion": r["chosen"],
            "prompt_id": r["prompt_id"],
            "source": r["source"],
        }
        for r in rows
    ]


def _norm(c: str) -> pl.Expr:
    return pl.col(c).str.replace_all(r"\s+", " ").str.strip_chars()


def kto_frame(df: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """One row per candidate of the selected pairs: chosen -> label true, rejected -> false, in pair order.

    Deduplicated by candidate (one prompt's same text counts once; a human-labeled pair's row wins). A text that is
    chosen in one pair and rejected in another has no single label: it is left out, and counted (the second value)."""
    cols = ["prompt_id", "messages", "split", "source"]
    sides = [
        df.with_row_index("_pair").select(
            "_pair",
            pl.lit(k).alias("_side"),
            *cols,
            pl.col(f"{side}_id").alias("candidate_id"),
            pl.col(side).alias("text"),
            pl.lit(side == "chosen").alias("label"),
        )
        for k, side in enumerate(("chosen", "rejected"))
    ]
    rows = pl.concat(sides).with_columns(_key=pl.concat_str([pl.col("prompt_id"), _norm("text")], separator="\x1f"))
    conflicting = rows.group_by("_key").agg(pl.col("label").n_unique() > 1).filter(pl.col("label"))["_key"]
    rows = rows.filter(~pl.col("_key").is_in(conflicting.implode()))
    rows = (
        rows.sort([pl.col("source") != "human", "_pair", "_side"])
        .unique("_key", keep="first", maintain_order=True)
        .sort(["_pair", "_side"])
        .drop("_pair", "_side", "_key")
    )
    return rows, conflicting.len()


def kto_rows(kto: pl.DataFrame, conversational: bool, tokenizer) -> list[dict]:
    def meta(r):
        return {"prompt_id": r["prompt_id"], "candidate_id": r["candidate_id"], "source": r["source"]}

    if conversational:
        return [
            {"prompt": _messages(r), "completion": _assistant(r["text"]), "label": r["label"], **meta(r)}
            for r in kto.iter_rows(named=True)
        ]
    return [
        {"prompt": render_prompt(tokenizer, _messages(r)), "completion": r["text"], "label": r["label"], **meta(r)}
        for r in kto.iter_rows(named=True)
    ]


def grpo_frame(run: Run, df: pl.DataFrame, config: ExportConfig) -> tuple[pl.DataFrame, int]:
    """The run's active prompts that carry a verifier's ground truth (a reference answer, or tests), each in the split
    its pairs are in (others split the same seeded way), so no prompt of a test file is trained on. A reference the
    verify stage could not parse is left out (counted, the second value): it would reward nothing."""
    given = [pl.col(c).str.strip_chars().fill_null("") != "" for c in ("reference_answer", "tests")]
    prompts = (
        active_prompts(run.read("prompts"))
        .filter(given[0] | given[1])
        .select("prompt_id", "messages", "reference_answer", "tests")
    )
    n_bad = 0
    if run.has(
        "verifications"
    ):  # the verify stage records a reference that does not parse as an error with no reference
        bad = (
            run.read("verifications")
            .filter((pl.col("status") == "error") & pl.col("reference").is_null())["prompt_id"]
            .unique()
        )
        bad_ref = pl.col("prompt_id").is_in(bad.implode()) & pl.col("tests").is_null()
        n_bad = prompts.filter(bad_ref).height
        prompts = prompts.filter(~bad_ref)
    known = df.select("prompt_id", "split").unique("prompt_id")
    prompts = prompts.join(known, on="prompt_id", how="left")
    others = prompts.filter(pl.col("split").is_null())["prompt_id"].to_list()
    test_ids = split_by_prompt(others, config.test_share, config.seed)
    prompts = prompts.with_columns(
        split=pl.col("split").fill_null(
            pl.when(pl.col("prompt_id").is_in(list(test_ids))).then(pl.lit("test")).otherwise(pl.lit("train"))
        )
    )
    return prompts, n_bad


def grpo_rows(grpo: pl.DataFrame, conversational: bool, tokenizer) -> list[dict]:
    out = []
    for r in grpo.iter_rows(named=True):
        prompt = _messages(r) if conversational else render_prompt(tokenizer, _messages(r))
        out.append(
            {
                "prompt": prompt,
                "reference_answer": r["reference_answer"],
                "tests": r["tests"],
                "prompt_id": r["prompt_id"],
            }
        )
    return out


def build_files(
    df: pl.DataFrame, config: ExportConfig, tokenizer, kto: pl.DataFrame | None = None, grpo: pl.DataFrame | None = None
) -> dict[str, tuple[list[dict], type]]:
    """file name -> (rows, line model) for every requested format and split."""
    files = {}
    for split in ("train", "test"):
        part = df.filter(pl.col("split") == split)
        for fmt in config.formats if part.height else []:
            if fmt == "trl-dpo":
                model = formats.TrlDpoChat if config.conversational else formats.TrlDpoText
                files[f"dpo_{split}.jsonl"] = (dpo_rows(part, config.conversational, tokenizer), model)
            elif fmt == "openai-dpo":
                files[f"openai_dpo_{split}.jsonl"] = (openai_rows(part), formats.OpenAIDpo)
            elif fmt == "sft":
                files[f"sft_{split}.jsonl"] = (sft_rows(part), formats.SftChat)
                model = formats.SftPromptCompletionChat if config.conversational else formats.SftPromptCompletionText
                files[f"sft_pc_{split}.jsonl"] = (sft_pc_rows(part, config.conversational, tokenizer), model)
        if kto is not None and (part := kto.filter(pl.col("split") == split)).height:
            model = formats.KtoChat if config.conversational else formats.KtoText
            files[f"kto_{split}.jsonl"] = (kto_rows(part, config.conversational, tokenizer), model)
        if grpo is not None and (part := grpo.filter(pl.col("split") == split)).height:
            model = formats.GrpoChat if config.conversational else formats.GrpoText
            files[f"grpo_{split}.jsonl"] = (grpo_rows(part, config.conversational, tokenizer), model)
    return files
