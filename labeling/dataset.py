"""The Argilla dataset for preference pairs: its settings, and one record per pair.

Annotators see the prompt as a chat and two responses, A and B, in an order drawn per pair from the
pair id (stable across pushes, so a re-push never reshuffles what someone is labeling). The candidate ids travel
with the record, so pull can map A/B back; nothing in it says which side the judge chose (below).

What annotators see of the judge is `labeling.judge_hint`: nothing (the default: these pairs came to people
because the judge is unsure, and a shown answer anchors them), its verdict as a visible metadata note
(`judge_says`) that chooses nothing for them, or a suggestion on the preference question, which the UI
pre-fills. Never a suggestion on the optional ratings: a pre-filled one would be submitted unlooked at.

Argilla returns a record's whole metadata to any workspace member through GET /api/v1/records/{id}, hidden
properties included, so nothing in a record names the judge's side or marks a gold pair: pull finds which
response was A from the candidate ids in the record (opaque hashes without the run), not from an
`a_is_chosen` flag.
"""

import math
import random
from typing import TYPE_CHECKING

import polars as pl

from labeling.settings import LabelingConfig
from pipeline.core.config import Config

if TYPE_CHECKING:
    import argilla as rg

PREFERENCE = "preference"
RATIONALE = "rationale"
RATING_A = "rating_a"
RATING_B = "rating_b"
PROMPT_VECTOR = "prompt_vector"
RATING_VALUES = [1, 2, 3, 4, 5]

# Argilla label value -> text on the button
LABELS = {"a": "A is better", "b": "B is better", "tie": "Tie: equally good", "both_bad": "Both are bad"}

# Metadata properties, for filtering in the UI and the SDK: name -> (kind, visible to annotators). Only the
# topic cluster is safe to show: the margin, route, generators and length gap all hint at an answer.
# Each property costs the server a validation per record, so the two candidate ids travel as extra metadata
# instead (opaque hashes: they name no side).
METADATA = {
    "cluster": ("int", True),
    "margin": ("float", False),
    "length_diff": ("int", False),
    "route": ("terms", False),
    "route_reason": ("terms", False),
    "generators": ("terms", False),  # both generators' names: filter "pairs involving model X"
    "judge_says": ("terms", True),  # judge_hint "shown": the judge's leaning, A / B / tie (absent otherwise)
}


def a_is_chosen(pair_id: str) -> bool:
    """Whether the judge's chosen response is shown as A: a coin flip seeded by the pair id."""
    return random.Random(pair_id).random() < 0.5


def to_label(value: str | None, a_chosen: bool) -> str | None:
    """An annotator's A/B answer as a label relative to the pair: chosen/rejected/tie/both_bad."""
    if value is None:
        return None
    if value == "a":
        return "chosen" if a_chosen else "rejected"
    if value == "b":
        return "rejected" if a_chosen else "chosen"
    if value in ("tie", "both_bad"):
        return value
    raise ValueError(f"unknown preference value {value!r}")


def to_ab(label: str, a_chosen: bool) -> str:
    """The inverse of to_label: a pair-relative verdict as the A/B value the annotator sees."""
    if label == "chosen":
        return "a" if a_chosen else "b"
    if label == "rejected":
        return "b" if a_chosen else "a"
    return label


def settings(config: LabelingConfig, vector_dims: int | None, client) -> "rg.Settings":
    """Dataset settings: chat prompt, responses A/B, a required preference, optional rationale and ratings.

    The client is needed only because the SDK binds metadata properties to one; nothing is sent. The SDK is
    imported here, not with the module: it takes seconds, and loading the stages (pipeline/core/registry.py) for
    `prefab status` or any one stage must not pay for it.
    """
    import argilla as rg  # start-up: argilla

    metadata = []
    for name, (kind, visible) in METADATA.items():
        cls = {"int": rg.IntegerMetadataProperty, "float": rg.FloatMetadataProperty, "terms": rg.TermsMetadataProperty}[
            kind
        ]
        metadata.append(cls(name=name, visible_for_annotators=visible, client=client))
    return rg.Settings(
        guidelines=config.guidelines,
        fields=[
            rg.ChatField(name="prompt", title="Prompt"),
            rg.TextField(name="response_a", title="Response A", use_markdown=True),
            rg.TextField(name="response_b", title="Response B", use_markdown=True),
        ],
        questions=[
            rg.LabelQuestion(name=PREFERENCE, title="Which response is better?", labels=LABELS, required=True),
            rg.TextQuestion(name=RATIONALE, title="Why? (optional)", required=False, use_markdown=False),
            rg.RatingQuestion(
                name=RATING_A,
                title="Rate response A (optional, 1 = poor, 5 = excellent)",
                values=RATING_VALUES,
                required=False,
            ),
            rg.RatingQuestion(
                name=RATING_B,
                title="Rate response B (optional, 1 = poor, 5 = excellent)",
                values=RATING_VALUES,
                required=False,
            ),
        ],
        metadata=metadata,
        allow_extra_metadata=True,
        vectors=[rg.VectorField(name=PROMPT_VECTOR, title="Prompt similarity", dimensions=vector_dims)]
        if vector_dims
        else [],
        # adaptive: a record stays in the queue until the most labels a pair may get; prefab takes it out once settled
        distribution=rg.TaskDistribution(
            min_submitted=config.max_labels_per_pair if config.redundancy == "adaptive" else config.min_submitted
        ),
    )


def prompt_vectors(embeddings: pl.DataFrame, model: str | None) -> tuple[dict[str, list[float]], int | None]:
    """prompt_id -> vector for one embedding model (the configured one, else the first found), and its dims."""
    prompts = embeddings.filter(pl.col("kind") == "prompt")
    if prompts.is_empty():
        return {}, None
    models = prompts["model"].unique(maintain_order=True).to_list()
    chosen_model = model if model in models else models[0]
    rows = prompts.filter(pl.col("model") == chosen_model)
    vectors = dict(zip(rows["id"].to_list(), rows["vector"].to_list(), strict=True))
    return vectors, len(rows["vector"][0])


def pairwise_verdicts(pair_judgments: pl.DataFrame) -> dict[str, dict]:
    """pair_id -> the judges' pairwise verdict (chosen/rejected/tie) with a 0..1 score and agent.

    Only verdicts that held in both orders count; the majority over judges wins (ties between verdicts
    broken by name, so the result is stable) and the score is the mean confidence of the judges behind it.
    """
    rows = pair_judgments.filter(
        pl.col("consistent").fill_null(False) & pl.col("verdict_ab").is_not_null() & pl.col("error").is_null()
    )
    if rows.is_empty():
        return {}
    votes = (
        rows.group_by("pair_id", "verdict_ab")
        .agg(pl.len().alias("n"), pl.col("confidence").mean(), pl.col("judge").sort().str.join("+"))
        .sort(["pair_id", "n", "verdict_ab"], descending=[False, True, False])
        .unique("pair_id", keep="first", maintain_order=True)
    )
    return {
        r["pair_id"]: {"label": r["verdict_ab"], "score": r["confidence"], "agent": r["judge"]}
        for r in votes.iter_rows(named=True)
    }


def pointwise_verdict(
    chosen_score: float | None, rejected_score: float | None, score_span: float, judges: list[str]
) -> dict | None:
    """Without a pairwise verdict the pointwise scores speak: score = margin over the scale's span."""
    if chosen_score is None or rejected_score is None:
        return None
    if chosen_score == rejected_score:
        return {"label": "tie", "score": None, "agent": "+".join(judges) or "judge"}
    margin = chosen_score - rejected_score
    score = min(1.0, max(0.0, margin / score_span)) if score_span > 0 else None
    return {"label": "chosen" if margin > 0 else "rejected", "score": score, "agent": "+".join(judges) or "judge"}


def build_records(
    pairs: pl.DataFrame,
    prompts: pl.DataFrame,
    candidates: pl.DataFrame,
    *,
    pair_judgments: pl.DataFrame,
    vectors: dict[str, list[float]],
    config: Config,
) -> list[dict]:
    """One Argilla record per pair, as the REST bulk-upsert item (suggestions named by question, not id yet).

    The record's external id is the pair id: upserting it again updates the same record.
    """
    labeling = config.labeling or LabelingConfig()
    aspects = config.judge.aspects if config.judge else []
    low = min((a.min for a in aspects), default=1.0)
    high = max((a.max for a in aspects), default=5.0)
    judges = [j.label for j in config.judge.judges] if config.judge else []
    messages = dict(zip(prompts["prompt_id"].to_list(), prompts["messages"].to_list(), strict=True))
    clusters = dict(zip(prompts["prompt_id"].to_list(), prompts["cluster"].to_list(), strict=True))
    cand = {
        row["candidate_id"]: row for row in candidates.select("candidate_id", "text", "model").iter_rows(named=True)
    }
    hint = labeling.judge_hint
    verdicts = pairwise_verdicts(pair_judgments) if hint != "none" else {}

    records = []
    for p in pairs.iter_rows(named=True):
        a_chosen = a_is_chosen(p["pair_id"])
        a_id, b_id = (p["chosen_id"], p["rejected_id"]) if a_chosen else (p["rejected_id"], p["chosen_id"])
        a, b = cand[a_id], cand[b_id]
        metadata = {
            "cluster": clusters.get(p["prompt_id"]),
            "margin": p["margin"],
            "length_diff": abs(len(a["text"] or "") - len(b["text"] or "")),
            "route": p["route"],
            "route_reason": p["route_reason"],
            "generators": sorted({a["model"], b["model"]}),
            "strategy": p["strategy"],
            "candidate_a": a_id,
            "candidate_b": b_id,
        }
        record = {
            "external_id": p["pair_id"],
            "fields": {
                "prompt": [{"role": m["role"], "content": m["content"]} for m in messages[p["prompt_id"]]],
                "response_a": a["text"] or "",
                "response_b": b["text"] or "",
            },
            "metadata": {
                k: v
                for k, v in metadata.items()
                if v is not None and not (isinstance(v, float) and not math.isfinite(v))
            },
            "suggestions": [],
        }
        vector = vectors.get(p["prompt_id"])
        if vector is not None:
            record["vectors"] = {PROMPT_VECTOR: list(vector)}
        verdict = None
        if hint != "none":
            verdict = verdicts.get(p["pair_id"]) or pointwise_verdict(
                p["chosen_score"], p["rejected_score"], high - low, judges
            )
        if verdict and hint == "shown":
            record["metadata"]["judge_says"] = {"a": "A", "b": "B"}.get(to_ab(verdict["label"], a_chosen), "tie")
        elif verdict and hint == "prefilled":
            record["suggestions"].append(
                {
                    "question_name": PREFERENCE,
                    "value": to_ab(verdict["label"], a_chosen),
                    "score": verdict["score"],
                    "agent": verdict["agent"],
                    "type": "model",
                }
            )
        records.append(record)
    return records
