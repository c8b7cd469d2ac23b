"""`prefab export`: the run's preference pairs as files that trainers accept as they are.

Selection happens once, over polars frames, and every format is written from the same selected rows and
the same train/test split (by prompt, so no prompt is in both); kto unpairs those rows, and grpo takes the run's
prompts that carry a verifier's ground truth, each in its pairs' split. Human labels override the judge: when
annotators preferred the judge's rejected side, the two sides swap. Every line is validated against its
format (training/formats.py) before any file is renamed into place, so a failed export leaves the
previous one untouched.
"""

import json
import math
import os
from pathlib import Path

import polars as pl

from labeling.settings import LabelingConfig
from pipeline.core.config import EMBEDDED_LLM, Config
from pipeline.core.errors import ExportError
from pipeline.core.stage import Stage
from pipeline.core.store import Run, atomic_write_text, content_id
from pipeline.models.checkpoints import load_tokenizer
from pipeline.stages.pair import is_verified
from training import formats
from training.formats import kto_weights
from training.settings import ExportConfig

# format -> file stem(s); each gets _train.jsonl and _test.jsonl
FILES = {
    "trl-dpo": ["dpo"],
    "openai-dpo": ["openai_dpo"],
    "sft": ["sft", "sft_pc"],  # chat messages; prompt/completion
    "kto": ["kto"],  # unpaired: prompt, completion, label
    "grpo": ["grpo"],  # prompts with the verifier's ground truth, for online RL
}
PREFERENCES = ("chosen", "rejected", "tie", "both_bad")


# ---------------------------------------------------------------- selection


def human_preferences(run: Run, labeling: LabelingConfig | None = None):
    """(pair_id -> resolved human preference with its confidence, the resolution). Re-resolved from `labels` when
    present, by the same resolution pull uses (labeling/aggregate.py: aggregation, tie rule with the judge's verdicts,
    flagged annotators), so an edited label counts even before the next pull rewrites `resolved`."""
    labeling = labeling or LabelingConfig()
    resolution = None
    if run.has("labels"):
        from labeling.aggregate import resolve_run

        resolution = resolve_run(run, labeling)
        resolved = resolution.resolved
    else:
        resolved = run.read_or_empty("resolved")
    return resolved.filter((pl.col("status") == "resolved") & pl.col("preference").is_not_null()).select(
        "pair_id", "preference", "agreement", "n_labels", pl.col("confidence").alias("human_confidence"), "method"
    ), resolution


def select_pairs(pairs: pl.DataFrame, preferences: pl.DataFrame, config: ExportConfig) -> tuple[pl.DataFrame, dict]:
    """Pairs to export with their final chosen/rejected ids, source and whether humans swapped them.

    Returns (selected, dropped counts by reason). Judge margins filter automatic pairs only: a human
    decision does not need the judge to be sure.
    """
    unknown = preferences.filter(~pl.col("preference").is_in(PREFERENCES))
    if unknown.height:
        row = unknown.row(0, named=True)
        raise ExportError(
            f"pair {row['pair_id']} has an unknown human preference {row['preference']!r}",
            where="labels",
            hint=f"labels must be one of {', '.join(PREFERENCES)}; pull again from Argilla",
        )
    df = pairs.join(preferences, on="pair_id", how="left").with_columns(
        source=pl.when(pl.col("preference").is_not_null())
        .then(pl.lit("human"))
        .when(pl.col("route").fill_null("auto") == "auto")
        .then(pl.lit("auto"))
        .otherwise(pl.lit("pending"))
    )  # unrouted: automatic
    dropped = {}

    def drop(mask: pl.Expr, reason: str):
        nonlocal df
        mask = mask.fill_null(False)
        n = df.filter(mask).height
        if n:
            dropped[reason] = dropped.get(reason, 0) + n
        df = df.filter(~mask)

    # left out by the route stage (pipeline/stages/route.py: both answers verified wrong), under its reason,
    # even if labeled
    left_out = pl.col("route") == "dropped"
    for reason in df.filter(left_out)["route_reason"].fill_null("dropped").unique(maintain_order=True).to_list():
        drop(left_out & (pl.col("route_reason").fill_null("dropped") == reason), reason)
    drop(pl.col("source") == "pending", "awaiting_labels")
    drop(~pl.col("source").is_in(config.sources), "source_not_selected")
    drop((pl.col("preference") == "tie") & (config.ties == "drop"), "human_tie")
    drop((pl.col("preference") == "both_bad") & (config.both_bad == "drop"), "human_both_bad")
    verified = is_verified()  # decided by the verifier, not by a judge margin
    drop(
        (pl.col("source") == "auto") & ~verified & (pl.col("margin").fill_null(-math.inf) < config.min_margin),
        "below_min_margin",
    )
    # how likely each label is right: the aggregated human confidence, or the calibrated one of an auto pair
    df = df.with_columns(
        label_confidence=pl.when(pl.col("source") == "human")
        .then(pl.col("human_confidence"))
        .otherwise(pl.col("confidence"))
    )
    if config.min_confidence is not None:
        drop(pl.col("label_confidence").is_null(), "confidence_unknown")
        drop(pl.col("label_confidence") < config.min_confidence, "below_min_confidence")
    swap = pl.col("preference") == "rejected"
    df = df.with_columns(
        swapped=swap.fill_null(False),
        chosen_id=pl.when(swap).then(pl.col("rejected_id")).otherwise(pl.col("chosen_id")),
        rejected_id=pl.when(swap).then(pl.col("chosen_id")).otherwise(pl.col("rejected_id")),
        chosen_score=pl.when(swap).then(pl.col("rejected_score")).otherwise(pl.col("chosen_score")),
        rejected_score=pl.when(swap).then(pl.col("chosen_score")).otherwise(pl.col("rejected_score")),
    )
    return df, dropped


def attach_texts(
    selected: pl.DataFrame, prompts: pl.DataFrame, candidates: pl.DataFrame, *, drop_equal: bool
) -> tuple[pl.DataFrame, int]:
    """Prompt messages and the two response texts; ExportError for a pair the run cannot back."""
    texts = candidates.select("candidate_id", "text", "model")
    df = (
        selected.join(prompts.select("prompt_id", "messages"), on="prompt_id", how="left")
        .join(
            texts.rename({"candidate_id": "chosen_id", "text": "chosen", "model": "chosen_model"}),
            on="chosen_id",
            how="left",
        )
        .join(
            texts.rename({"candidate_id": "rejected_id", "text": "rejected", "model": "rejected_model"}),
            on="rejected_id",
            how="left",
        )
    )
    orphans = df.filter(pl.col("messages").is_null())
    if orphans.height:
        row = orphans.row(0, named=True)
        raise ExportError(
            f"pair {row['pair_id']} refers to prompt {row['prompt_id']}, which is not in prompts.parquet",
            where="pairs.parquet",
            hint="re-run `prefab pair` after changing the prompts",
        )
    for side in ("chosen", "rejected"):
        bad = df.filter(pl.col(side).is_null() | (pl.col(side).str.strip_chars() == ""))
        if bad.height:
            row = bad.row(0, named=True)
            raise ExportError(
                f"pair {row['pair_id']}: its {side} candidate {row[side + '_id']} has no text "
                f"({bad.height} pair(s) like this)",
                where="pairs.parquet",
                hint="re-run `prefab generate --retry-failed` and `prefab pair`, or drop those pairs",
            )
    equal = pl.col("chosen").str.strip_chars() == pl.col("rejected").str.strip_chars()
    n_equal = df.filter(equal).height
    if n_equal and not drop_equal:
        row = df.filter(equal).row(0, named=True)
        raise ExportError(
            f"pair {row['pair_id']}: chosen and rejected are the same text ({n_equal} pair(s) like this)",
            where="pairs.parquet",
            hint="a preference between equal texts teaches nothing; re-run `prefab pair`, "
            "or set `export.drop_equal: true` (--drop-equal) to leave them out",
        )
    return df.filter(~equal), n_equal


def dedup(df: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """One row per (prompt, chosen text, rejected text); human-labeled rows win."""
    norm = lambda c: pl.col(c).str.replace_all(r"\s+", " ").str.strip_chars()  # noqa: E731
    df = df.with_columns(_key=pl.concat_str([pl.col("prompt_id"), norm("chosen"), norm("rejected")], separator="\x1f"))
    df = df.sort([pl.col("source") != "human", "pair_id"])
    out = df.unique("_key", keep="first", maintain_order=True).drop("_key")
    return out, df.height - out.height


def split_by_prompt(prompt_ids: list[str], test_share: float, seed: int) -> set[str]:
    """Test prompt ids: a seeded hash order of the prompts, the first `test_share` of them."""
    unique = sorted(set(prompt_ids), key=lambda p: content_id("split", seed, p))
    n_test = round(test_share * len(unique))
    if test_share > 0 and n_test == 0 and len(unique) >= 2:
        n_test = 1
    return set(unique[:n_test])


# ---------------------------------------------------------------- tokens


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


# ---------------------------------------------------------------- rows per format


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
    from pipeline.core.queries import active_prompts

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


# ---------------------------------------------------------------- the stage


def export(
    run: Run,
    config: ExportConfig,
    *,
    labeling: LabelingConfig | None = None,
    config_hash: str | None = None,
    save_hf: str | None = None,
    push_to_hub: str | None = None,
) -> dict:
    """Select, split, validate and write the requested formats; return counts for the manifest."""
    out_dir = Path(config.out_dir) if config.out_dir else run.path / "exports"
    if push_to_hub and os.environ.get("HF_HUB_OFFLINE") == "1":  # before anything is written
        raise ExportError(
            f"cannot push to {push_to_hub}: HF_HUB_OFFLINE=1",
            hint="unset HF_HUB_OFFLINE and log in (hf auth login) to push",
        )
    pairs = run.read("pairs")
    preferences, resolution = human_preferences(run, labeling)
    selected, dropped = select_pairs(pairs, preferences, config)
    df, n_equal = attach_texts(selected, run.read("prompts"), run.read("candidates"), drop_equal=config.drop_equal)
    if n_equal:
        dropped["equal_sides"] = n_equal
    df, n_dup = dedup(df)
    if n_dup:
        dropped["duplicates"] = n_dup
    check_not_empty(df, pairs, dropped, run)  # before the tokenizer: loading it costs far more than this check
    tokenizer = (
        load_tokenizer(config.tokenizer, hint="pass --tokenizer DIR holding tokenizer.json")
        if needs_tokenizer(config)
        else None
    )
    df = token_lengths(df, tokenizer) if tokenizer else char_lengths(df)
    if config.max_tokens:
        too_long = pl.col("prompt_tokens") + pl.max_horizontal("chosen_tokens", "rejected_tokens") > config.max_tokens
        n_long = df.filter(too_long).height
        if n_long:
            dropped["over_max_tokens"] = n_long
        df = df.filter(~too_long)
    check_not_empty(df, pairs, dropped, run)
    test_ids = split_by_prompt(df["prompt_id"].to_list(), config.test_share, config.seed)
    df = df.with_columns(
        split=pl.when(pl.col("prompt_id").is_in(list(test_ids))).then(pl.lit("test")).otherwise(pl.lit("train"))
    )
    kto = grpo = None
    if "kto" in config.formats:
        kto, n_conflicting = kto_frame(df)
        if n_conflicting:
            dropped["kto_conflicting_labels"] = n_conflicting
    if "grpo" in config.formats:
        grpo, n_bad = grpo_frame(run, df, config)
        if n_bad:
            dropped["grpo_bad_reference"] = n_bad
        if grpo.is_empty():
            raise ExportError(
                "the grpo format needs prompts with a verifier's ground truth, and no prompt of this run has a "
                "reference answer" + (" that parses" if n_bad else "") + " or tests",
                where=str(run.path / "prompts.parquet"),
                hint="ingest prompts with a `reference_answer` (or `answer`) column (--answer-column maps another) "
                "or a `tests` column, or leave grpo out of --format",
            )
    files = build_files(df, config, tokenizer, kto, grpo)
    for name, (rows, model) in files.items():  # all validated before anything is written
        try:
            formats.validate_lines(Path(name), rows, model)
        except ValueError as e:
            raise ExportError(
                f"refusing to write an invalid line: {e}",
                where=str(out_dir / name),
                hint="the run holds a prompt or response this format cannot carry (see the field named); "
                "fix or drop it in the run, then export again",
            ) from e
    counts = export_counts(df, dropped, files, pairs.height)
    if kto is not None:
        train = kto.filter(pl.col("split") == "train")
        counts["kto"] = {
            "desirable": int(kto["label"].sum()),
            "undesirable": int((~kto["label"]).sum()),
            "train_desirable": int(train["label"].sum()),
            "train_undesirable": int((~train["label"]).sum()),
        }
    if grpo is not None:
        counts["grpo"] = {
            "prompts": grpo.height,
            "train": grpo.filter(pl.col("split") == "train").height,
            "test": grpo.filter(pl.col("split") == "test").height,
            "with_reference": grpo.filter(pl.col("reference_answer").is_not_null()).height,
            "with_tests": grpo.filter(pl.col("tests").is_not_null()).height,
        }
    card = dataset_card(run, df, counts, config, files, config_hash, resolution, labeling or LabelingConfig())
    for name, (rows, _) in files.items():
        atomic_write_text(out_dir / name, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    for stem in [s for f in config.formats for s in FILES[f]]:  # a split that is now empty must not linger
        for split in ("train", "test"):
            if f"{stem}_{split}.jsonl" not in files:
                (out_dir / f"{stem}_{split}.jsonl").unlink(missing_ok=True)
    split_prompts = pl.concat(
        [df.select("prompt_id", "split")] + ([grpo.select("prompt_id", "split")] if grpo is not None else [])
    )
    splits = {
        s: sorted(set(split_prompts.filter(pl.col("split") == s)["prompt_id"].to_list())) for s in ("train", "test")
    }
    atomic_write_text(out_dir / "splits.json", json.dumps(splits, indent=1))
    atomic_write_text(out_dir / "README.md", card)
    if save_hf:
        counts["saved_hf"] = save_datasets(files, Path(save_hf))
    if push_to_hub:
        counts["pushed_to"] = push_datasets(files, push_to_hub)
    return counts


def check_not_empty(df: pl.DataFrame, pairs: pl.DataFrame, dropped: dict, run: Run) -> None:
    """An export with nothing left stops with the reasons pairs were dropped, and what would give it some."""
    if df.height == 0:
        reasons = ", ".join(f"{k}={v}" for k, v in dropped.items()) or "the run has no pairs"
        hint = (
            "label the human-routed pairs (prefab push/pull), add --source auto, "
            "lower --min-margin or raise --max-tokens"
            if pairs.height
            else f"make pairs first: prefab pair --run {run.path} (a lower pair.min_margin gives more)"
        )
        raise ExportError(
            f"nothing to export: {pairs.height} pair(s), none selected ({reasons})", where=str(run.path), hint=hint
        )


def export_counts(df: pl.DataFrame, dropped: dict, files: dict, n_pairs: int) -> dict:
    per = lambda col: {str(k): v for k, v in df.group_by(col).len().sort(col).iter_rows()}  # noqa: E731
    return {
        "pairs": n_pairs,
        "exported": df.height,
        "train": df.filter(pl.col("split") == "train").height,
        "test": df.filter(pl.col("split") == "test").height,
        "prompts": df["prompt_id"].n_unique(),
        "by_source": per("source"),
        "by_route": per("route"),
        "human_swapped": int(df["swapped"].sum()),
        "dropped": dropped,
        "files": {name: len(rows) for name, (rows, _) in files.items()},
    }


def _stats(s: pl.Series) -> str:
    return f"{s.min()} / {int(s.median())} / {s.mean():.1f} / {s.max()}"


def dataset_card(
    run: Run,
    df: pl.DataFrame,
    counts: dict,
    config: ExportConfig,
    files: dict,
    config_hash: str | None,
    resolution=None,
    labeling: LabelingConfig | None = None,
) -> str:
    """README.md beside the files: what made the data and what is in it (Hugging Face card front matter)."""
    manifest = run.manifest()
    candidates = run.read_or_empty("candidates")
    judges = sorted(
        set(run.read_or_empty("judgments")["judge"].to_list())
        | set(run.read_or_empty("pair_judgments")["judge"].to_list())
    )
    generators = sorted(set(candidates["model"].to_list()))
    config_hash = config_hash or content_id("export", config.model_dump(mode="json"))
    front = ["---", "configs:"]
    for fmt in config.formats:
        for stem in FILES[fmt]:
            splits = [s for s in ("train", "test") if f"{stem}_{s}.jsonl" in files]
            if splits:
                front += [f"- config_name: {stem}", "  data_files:"]
                front += [f"  - split: {s}\n    path: {stem}_{s}.jsonl" for s in splits]
    front += [
        "tags:",
        "- dpo",
        *[f"- {f}" for f in ("kto", "grpo") if f in config.formats],
        "- preference",
        "- prefab",
        "---",
        "",
    ]
    lines = [
        f"# Preference data from `{run.path.name}`",
        "",
        "Made by prefab from prompts, model responses, an LLM judge and human labels.",
        "",
        "## How it was made",
        "",
        f"- generators: {', '.join(f'`{g}`' for g in generators) or 'n/a'}",
        f"- judge(s): {', '.join(f'`{j}`' for j in judges) or 'n/a'}",
        f"- export config hash: `{config_hash}`; sources: {', '.join(config.sources)}; min judge margin (auto pairs): "
        f"{config.min_margin}; ties: {config.ties}; both bad: {config.both_bad}; max tokens: "
        f"{config.max_tokens or 'none'} "
        + (
            f"(tokenizer `{config.tokenizer or EMBEDDED_LLM}`)"
            if "prompt_tokens" in df.columns
            else "(tokens not counted)"
        ),
        f"- split by prompt, seed {config.seed}: {counts['train']} train / {counts['test']} test pairs; "
        "no prompt is in both",
        "- human labels override the judge: where annotators preferred the judge's rejected response the sides are "
        f"swapped ({counts['human_swapped']} pair(s))",
        "",
        "## Files",
        "",
        "| file | rows | format |",
        "|---|---|---|",
    ]
    for name, (rows, model) in files.items():
        lines.append(f"| `{name}` | {len(rows)} | {model.__doc__.splitlines()[0]} |")
    lines += ["", "## Counts", "", "| | pairs |", "|---|---|"]
    lines += [f"| source: {k} | {v} |" for k, v in counts["by_source"].items()]
    lines += [f"| route: {k} | {v} |" for k, v in counts["by_route"].items()]
    lines += [f"| dropped: {k} | {v} |" for k, v in counts["dropped"].items()]
    lines += kto_lines(counts.get("kto")) + grpo_lines(counts.get("grpo"))
    lines += [
        "",
        "## Estimated label accuracy",
        "",
        "Stated: how often the exported labels are right, with a 90% interval. *Measured* rests on human-labeled gold "
        "pairs; *assumed* rests on a stated prior that gold answers have not (yet) replaced.",
        "",
    ]
    lines += accuracy_lines(run, df, resolution, labeling or LabelingConfig())
    agreement = manifest.get("stages", {}).get("pull", {}).get("agreement") or {}
    agree = [
        f"- {k}: {v:.3f}" if isinstance(v, float) else f"- {k}: {v}"
        for k, v in agreement.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    ]
    for kind, v in (agreement.get("judge_human") or {}).items():
        if isinstance(v, dict) and v.get("agreement") is not None:
            agree.append(f"- judge = human ({kind.replace('_', ' ')}): {v['agreement']:.3f} over {v.get('n')} pairs")
    if df["agreement"].drop_nulls().len():
        agree.append(
            "- mean share of annotators agreeing with the majority (exported human pairs): "
            f"{df['agreement'].drop_nulls().mean():.3f}"
        )
    lines += ["", "## Agreement", ""] + (agree or ["no human labels in this export"])
    unit = "tokens" if "prompt_tokens" in df.columns else "chars"
    chosen_longer = (df[f"chosen_{unit}"] > df[f"rejected_{unit}"]).mean()
    lines += [
        "",
        f"## Lengths ({'tokens' if unit == 'tokens' else 'characters; tokens with --tokenizer'}: "
        "min / median / mean / max)",
        "",
        f"- prompt: {_stats(df[f'prompt_{unit}'])}",
        f"- chosen: {_stats(df[f'chosen_{unit}'])}",
        f"- rejected: {_stats(df[f'rejected_{unit}'])}",
        f"- chosen longer than rejected: {chosen_longer:.1%} of pairs (far from 50% means a length bias a model can "
        "learn)",
        "",
    ]
    return "\n".join(front + lines)


def kto_lines(kto: dict | None) -> list[str]:
    """The card's KTO section: how unbalanced the unpaired rows are and the weights that make up for it."""
    if not kto:
        return []
    n_d, n_u = kto["train_desirable"], kto["train_undesirable"]
    d_w, u_w = kto_weights(n_d, n_u)
    out = [
        "",
        "## KTO (unpaired)",
        "",
        f"- desirable (chosen, label true): {kto['desirable']} rows ({n_d} train); undesirable (rejected, label "
        f"false): {kto['undesirable']} rows ({n_u} train); one row per candidate, "
        "a text chosen in one pair and rejected in another left out",
        "- TRL's KTOTrainer wants desirable_weight × n_desirable / (undesirable_weight × n_undesirable) within [1, "
        f"4/3] (KTO paper, Eq. 8); here, with weights 1.0, it is {n_d / n_u:.3f}"
        if n_d and n_u
        else "- the train split lacks one of the two labels: KTO needs both desirable and undesirable rows",
    ]
    if (d_w, u_w) != (1.0, 1.0):
        out.append(
            f"- train with `desirable_weight: {d_w}` and `undesirable_weight: {u_w}` (ratio "
            f"{d_w * n_d / (u_w * n_u):.3f}); `prefab train kto` sets them itself unless `balance: false`"
        )
    elif n_d and n_u:
        out.append("- balanced enough: keep both weights at 1.0")
    return out


def grpo_lines(grpo: dict | None) -> list[str]:
    if not grpo:
        return []
    return [
        "",
        "## GRPO prompt set",
        "",
        f"- {grpo['prompts']} prompts ({grpo['train']} train / {grpo['test']} test): the run's prompts with a "
        f"verifier's ground truth, {grpo['with_reference']} with a reference answer (math-verify), "
        f"{grpo['with_tests']} with tests (the code sandbox); a prompt is in the same split as its pairs",
        "- `prefab train grpo` rewards a completion with the same verifier: 1.0 for "
        "a correct final answer, else 0.0; for code, the share of tests passed",
    ]


def accuracy_lines(run: Run, df: pl.DataFrame, resolution=None, labeling: LabelingConfig | None = None) -> list[str]:
    """The dataset card's statement of how often the exported labels are right, per source: how much, with what
    interval, and whether measured on gold or assumed."""
    labeling = labeling or LabelingConfig()
    out = []
    routing = run.stage_info("route").get("routing") or {}
    by_verifier = (pl.col("source") == "auto") & is_verified()
    verified = df.filter(by_verifier)
    if verified.height:
        out.append(
            f"- verified ({verified.height} pairs): assumed right as far as the reference answers are: the chosen "
            "response's final answer matches the prompt's reference answer and the rejected one's does not "
            "(math-verify); not measured on gold"
        )
    for source in ("human", "auto"):
        part = df.filter((pl.col("source") == source) & ~by_verifier)
        if part.is_empty():
            continue
        known = part["label_confidence"].drop_nulls()
        if source == "human" and known.len():
            out.append(human_line(part, known, resolution, labeling))
        elif source == "auto" and known.len() == part.height:
            level = routing.get("auto_level", 0.95)
            interval = (
                f"; {level:.0%} interval for all auto pairs of the run {routing['auto_low']:.1%} to "
                f"{routing['auto_high']:.1%}"
                if routing.get("auto_low") is not None
                else ""
            )
            out.append(
                f"- auto ({part.height} pairs): {known.mean():.1%} right, measured: the judges' confidence calibrated "
                f"on {run.stage_info('calibrate').get('gold_pairs', '?')} human-labeled gold pairs, signal "
                f"`{routing.get('signal', '?')}`{interval}; assumes the run's pairs are like the gold ones"
            )
        else:
            out.append(
                f"- {source} ({part.height} pairs): unknown"
                + (" (no gold calibration: run `prefab calibrate`)" if source == "auto" else " (no label confidence)")
            )
    if run.has("annotators"):
        for r in run.read("annotators").iter_rows(named=True):
            flag = " (flagged)" if r["flagged"] else ""
            measured = (
                f"measured {r['gold_accuracy']:.1%} right on {r['gold_answers']} gold pairs [{r['gold_low']:.2f}, "
                f"{r['gold_high']:.2f}]"
                if r["gold_answers"]
                else "no gold answers yet"
            )
            estimated = (
                f"; estimated {r['reliability']:.1%} [{r['reliability_low']:.2f}, "
                f"{r['reliability_high']:.2f}] ({r['basis']})"
                if r.get("reliability_low") is not None
                else ""
            )
            out.append(f"- annotator {r['annotator']}: {measured}{estimated}{flag}")
    return out or ["- unknown"]


def human_line(part: pl.DataFrame, known: pl.Series, resolution, labeling: LabelingConfig) -> str:
    """The human source's line: the model's stated accuracy and interval, or what the aggregation gives."""
    method = part["method"].drop_nulls()
    method = method[0] if method.len() else None
    n = part.height
    if method == "bayesian" and resolution is not None and resolution.model is not None:
        # the preference as resolved (before export swapped the sides) and the pairs that carry a confidence
        sided = part.filter(pl.col("human_confidence").is_not_null())
        stated = resolution.stated(sided["pair_id"].to_list(), sided["preference"].to_list())
        quality = resolution.annotators
        gold = int(quality["gold_answers"].sum()) if quality.height else 0
        assumed = stated["assumed"]
        basis = (
            (
                f"assumed: annotator accuracy from the prior {resolution.prior.describe()} (labeling.prior_accuracy), "
                f"moved by {gold} gold answer(s) and by agreement; fewer than {labeling.min_gold_answers} gold answers "
                f"for {', '.join(assumed)}"
            )
            if assumed
            else f"measured: every annotator's accuracy rests on gold answers ({gold} in all)"
        )
        return (
            f"- human ({n} pairs): {stated['stated']:.1%} right, 90% interval {stated['low']:.1%} to "
            f"{stated['high']:.1%}; {basis} (one-coin Bayesian model, the judge's calibrated confidence as each pair's "
            "prior)"
        )
    if method == "dawid_skene":
        return (
            f"- human ({n} pairs): {known.mean():.1%} by Dawid-Skene's posterior (crowd-kit), not an honest "
            "probability with few labels, one annotator or no gold answers: no interval"
        )
    return f"- human ({n} pairs): {known.mean():.1%} of annotators behind the majority (agreement, not a probability)"


def _datasets(files: dict) -> dict:
    """stem -> DatasetDict of its splits."""
    from datasets import Dataset, DatasetDict

    out: dict = {}
    for name, (rows, _) in files.items():
        stem, split = name.removesuffix(".jsonl").rsplit("_", 1)
        out.setdefault(stem, DatasetDict())[split] = Dataset.from_list(rows)
    return out


def save_datasets(files: dict, target: Path) -> str:
    for stem, dataset in _datasets(files).items():
        dataset.save_to_disk(str(target / stem))
    return str(target)


def push_datasets(files: dict, repo: str) -> str:
    for stem, dataset in _datasets(files).items():
        dataset.push_to_hub(repo, config_name=stem)
    return repo


def step(config: Config, run: Run, save_hf: str | None = None, push_to_hub: str | None = None) -> dict:
    """Stage "export" of `prefab run`: counts go to the manifest, files to <run>/exports."""
    from pipeline.core.progress import summary
    from pipeline.core.runner import section_hash

    counts = export(
        run,
        config.export or ExportConfig(),
        labeling=config.labeling,
        config_hash=section_hash(config, "export"),
        save_hf=save_hf,
        push_to_hub=push_to_hub,
    )
    summary(
        f"export {run.path}",
        {k: v for k, v in counts.items() if isinstance(v, int)}
        | {f"source {k}": v for k, v in counts["by_source"].items()}
        | {f"dropped {k}": v for k, v in counts["dropped"].items()},
    )
    return counts


STAGE = Stage(name="export", order=100, step=step, section="export", settings=ExportConfig)
