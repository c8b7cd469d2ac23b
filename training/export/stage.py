"""The export stage: select, split, validate and write the requested formats into <run>/exports, with the dataset
card and splits.json; `STAGE` registers it."""

import json
import os
from pathlib import Path

import polars as pl

from labeling.settings import LabelingConfig
from pipeline.core.config import Config
from pipeline.core.errors import ExportError
from pipeline.core.progress import summary
from pipeline.core.runner import section_hash
from pipeline.core.stage import Stage
from pipeline.core.store import Run, atomic_write_text
from pipeline.models.checkpoints import load_tokenizer
from training import formats
from training.export.card import dataset_card, export_counts
from training.export.hub import push_datasets, save_datasets
from training.export.rows import FILES, build_files, grpo_frame, kto_frame
from training.export.selection import (
    attach_texts,
    check_not_empty,
    dedup,
    human_preferences,
    select_pairs,
    split_by_prompt,
)
from training.export.tokens import char_lengths, needs_tokenizer, token_lengths
from training.settings import ExportConfig


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


def step(config: Config, run: Run, save_hf: str | None = None, push_to_hub: str | None = None) -> dict:
    """Stage "export" of `prefab run`: counts go to the manifest, files to <run>/exports."""
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
