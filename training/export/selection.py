"""Which pairs an export takes: human labels over the judge, texts attached, duplicates dropped, split by prompt."""

import math

import polars as pl

from labeling.aggregate import resolve_run
from labeling.settings import LabelingConfig
from pipeline.core.errors import ExportError
from pipeline.core.store import Run, content_id
from pipeline.stages.pair import is_verified
from training.settings import ExportConfig

PREFERENCES = ("chosen", "rejected", "tie", "both_bad")


def human_preferences(run: Run, labeling: LabelingConfig | None = None):
    """(pair_id -> resolved human preference with its confidence, the resolution). Re-resolved from `labels` when
    present, by the same resolution pull uses (labeling/aggregate.py: aggregation, tie rule with the judge's verdicts,
    flagged annotators), so an edited label counts even before the next pull rewrites `resolved`."""
    labeling = labeling or LabelingConfig()
    resolution = None
    if run.has("labels"):
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
