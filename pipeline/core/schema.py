"""One schema per run-directory table (docs/architecture.md: the run directory), checked on every read and write.

Columns may be added by a later stage only through this module, so every reader agrees.
"""

from typing import TypeVar

import polars as pl

from pipeline.core.errors import RunError

Frame = TypeVar("Frame", pl.DataFrame, pl.LazyFrame)  # what conform takes, and gives back

MESSAGE = pl.Struct({"role": pl.String, "content": pl.String})
ASPECT = pl.Struct({"name": pl.String, "score": pl.Float64, "rationale": pl.String})

TABLES: dict[str, dict[str, pl.DataType | type[pl.DataType]]] = {  # a class (pl.String) or an instance (pl.List(...))
    "prompts": {
        "prompt_id": pl.String,  # hash of the normalized messages
        "messages": pl.List(MESSAGE),  # chat ending in a user turn
        "source": pl.String,  # file (or dataset) it came from
        "source_line": pl.Int64,  # 1-based line / row in the source
        "category": pl.String,  # optional label carried from the source
        "duplicate_of": pl.String,  # prompt_id of the kept copy, null when kept
        "cluster": pl.Int32,  # topic cluster, null before clustering
        "excluded_reason": pl.String,  # set by dedup: duplicate | near_duplicate | max_per_cluster | target_size
        # the source's reference answer (math), checked by the verify stage; null without one
        "reference_answer": pl.String,
        # the source's Python tests (code), run against each candidate by the verify stage; null without
        "tests": pl.String,
    },
    "bad_rows": {
        "source": pl.String,
        "source_line": pl.Int64,
        "field": pl.String,
        "error": pl.String,
    },
    "candidates": {
        "candidate_id": pl.String,  # hash of prompt_id, model, sampling params, sample index
        "prompt_id": pl.String,
        "model": pl.String,  # generator name from the config
        "temperature": pl.Float64,
        "top_p": pl.Float64,
        "sample_index": pl.Int32,
        "text": pl.String,  # null when the call failed
        "finish_reason": pl.String,
        "prompt_tokens": pl.Int64,
        "completion_tokens": pl.Int64,
        "latency_s": pl.Float64,
        "error": pl.String,  # reason of a failed call, null on success
    },
    "judgments": {
        "candidate_id": pl.String,
        "judge": pl.String,
        "aspects": pl.List(ASPECT),
        "overall": pl.Float64,  # weighted mean of aspect scores, null when unparseable
        "rationale": pl.String,
        "raw": pl.String,  # the judge's raw output, kept for audit
        "error": pl.String,
    },
    "pair_judgments": {
        "pair_id": pl.String,
        "judge": pl.String,
        "verdict_ab": pl.String,  # chosen shown first: "chosen" | "rejected" | "tie" | null
        "verdict_ba": pl.String,  # rejected shown first, mapped back to the same words
        "consistent": pl.Boolean,
        "confidence": pl.Float64,
        "raw": pl.String,
        "error": pl.String,
        "p_chosen_ab": pl.Float64,  # probability the chosen side wins, chosen shown first (from logprobs; null without)
        "p_chosen_ba": pl.Float64,  # the same with rejected shown first
    },
    "embeddings": {
        "id": pl.String,  # prompt_id or candidate_id
        "kind": pl.String,  # "prompt" | "candidate"
        "model": pl.String,
        "vector": pl.List(pl.Float32),
    },
    "candidate_scores": {  # embed: embedding-based scores of each candidate
        "candidate_id": pl.String,
        "relevance": pl.Float64,  # cosine of the candidate with its prompt
        "near_identical_to": pl.String,  # an earlier candidate of the same prompt with cosine >= embed.near_identical
    },
    # verify: each candidate's final answer against its prompt's reference (math-verify), or its code against the tests
    "verifications": {
        "candidate_id": pl.String,
        "prompt_id": pl.String,
        "verifier": pl.String,  # "math" | "code"
        "status": pl.String,  # "correct" | "incorrect" | "unparseable" (no final answer found) | "error" (see error)
        "answer": pl.String,  # math: the final answer math-verify extracted, null when none; code: null
        # math: the reference as math-verify read it (sympy), null when it could not; code: null
        "reference": pl.String,
        # math: a reference that does not parse, a check that timed out; code: why not every test passed
        "error": pl.String,
        "score": pl.Float64,  # math: 1 or 0; code: the share of tests passed; null on an error
        "check_key": pl.String,  # hash of reference, candidate text and settings: a row is reused while it matches
    },
    "pairs": {
        "pair_id": pl.String,  # hash of the two candidate ids
        "prompt_id": pl.String,
        "chosen_id": pl.String,
        "rejected_id": pl.String,
        "chosen_score": pl.Float64,
        "rejected_score": pl.Float64,
        "margin": pl.Float64,
        "similarity": pl.Float64,  # cosine of chosen and rejected vectors, null without embeddings
        "strategy": pl.String,  # the pair strategy, or "verified" (a correct against an incorrect final answer)
        "route": pl.String,  # "auto" | "human" | "dropped" (neither: no label is worth having, route_reason says why)
        "route_reason": pl.String,
        # calibrated probability that chosen is the better side (null without gold calibration)
        "confidence": pl.Float64,
        # the routing signal's value that `confidence` calibrates (null without gold calibration)
        "signal_value": pl.Float64,
    },
    "labels": {
        "pair_id": pl.String,
        "annotator": pl.String,
        "status": pl.String,  # "submitted" | "discarded"
        "label": pl.String,  # "chosen" | "rejected" | "tie" | "both_bad", A/B already mapped back
        "rationale": pl.String,
        "updated_at": pl.Datetime("us", "UTC"),
        "label_ab": pl.String,  # the answer as the annotator saw it: "a" | "b" | "tie" | "both_bad"
        "rating_chosen": pl.Int32,  # optional 1..5 ratings, mapped back from A/B
        "rating_rejected": pl.Int32,
        "missing_since": pl.Datetime("us", "UTC"),  # set when the server no longer has it; the label is kept
    },
    "resolved": {
        "pair_id": pl.String,
        "n_labels": pl.Int32,
        "preference": pl.String,  # majority label, "chosen" | "rejected" | "tie" | "both_bad" | null
        "agreement": pl.Float64,  # share of annotators who gave the majority label
        "status": pl.String,  # "resolved" | "split" (tied vote, dropped) | "pending" (< min_submitted) | "discarded"
        # probability the preference is right (bayesian or dawid_skene posterior; majority: agreement share)
        "confidence": pl.Float64,
        "method": pl.String,  # "bayesian" | "dawid_skene" | "majority"
    },
    "gold": {  # gold pairs (human-labeled), read by calibrate
        "gold_id": pl.String,  # hash of the normalized messages and both responses
        "messages": pl.List(MESSAGE),
        "chosen": pl.String,  # the response people preferred
        "rejected": pl.String,
        "source": pl.String,  # the source column, else the file name
        "category": pl.String,
        "file": pl.String,
        "line": pl.Int64,
    },
    "gold_judgments": {  # every judge on every gold pair, chosen = the gold-preferred response
        "gold_id": pl.String,
        "judge": pl.String,
        "chosen_score": pl.Float64,  # pointwise overall scores
        "rejected_score": pl.Float64,
        "verdict_ab": pl.String,  # pairwise, gold-chosen shown as A: "chosen" | "rejected" | "tie" | null
        "verdict_ba": pl.String,  # gold-chosen shown as B, mapped back
        "p_chosen_ab": pl.Float64,
        "p_chosen_ba": pl.Float64,
        "error": pl.String,
    },
    "gold_signals": {  # the routing signals on gold: how sure the judges were, and whether their label was right
        "gold_id": pl.String,
        "source": pl.String,
        "signal": pl.String,  # "margin" | "pairwise" | "ensemble"
        "confidence": pl.Float64,  # 0.5..1: support for the side the judges' scores pick
        "correct": pl.Float64,  # 1 right, 0 wrong, 0.5 a tie of the scores
    },
    "calibration": {  # one row per judge (or routing signal) and gold source ("all" pools them)
        "judge": pl.String,
        "method": pl.String,  # pointwise | pairwise | pairwise_prob | ensemble | signal
        "signal": pl.String,  # for method "signal": margin | pairwise | ensemble
        "source": pl.String,
        "n": pl.Int64,  # gold pairs with an answer
        "failures": pl.Int64,  # gold pairs without one
        "accuracy": pl.Float64,  # ties count half
        "accuracy_low": pl.Float64,  # 95% Wilson interval
        "accuracy_high": pl.Float64,
        "accuracy_no_ties": pl.Float64,
        "n_no_ties": pl.Int64,
        "tie_rate": pl.Float64,
        "consistency": pl.Float64,  # pairwise: same winner in both orders
        "position_a": pl.Float64,  # pairwise: share of decided verdicts that named A (0.5: no position bias)
        "accuracy_chosen_shorter": pl.Float64,  # length bias: accuracy where people preferred the shorter response
        "accuracy_chosen_longer": pl.Float64,
        "curve": pl.List(
            pl.Struct(
                {
                    "threshold": pl.Float64,
                    "coverage": pl.Float64,
                    "n": pl.Int64,
                    "accuracy": pl.Float64,
                    "low": pl.Float64,
                    "high": pl.Float64,
                }
            )
        ),
    },
    "annotators": {  # written by pull: each annotator's quality, measured on the gold pairs mixed into their queue
        "annotator": pl.String,
        "labels": pl.Int64,  # submitted labels on run pairs
        "gold_answers": pl.Int64,
        "gold_accuracy": pl.Float64,
        "gold_low": pl.Float64,
        "gold_high": pl.Float64,
        "agreement": pl.Float64,  # share of their labels that match another annotator's on the same pair
        "median_seconds": pl.Float64,  # between consecutive submissions (gaps over 10 minutes are breaks)
        "reliability": pl.Float64,  # the aggregation's estimate of their accuracy (bayesian: posterior mean)
        "reliability_low": pl.Float64,  # bayesian: its 90% interval
        "reliability_high": pl.Float64,
        "basis": pl.String,  # bayesian: "measured" (enough gold answers) or "assumed" (the prior, moved by agreement)
        "flagged": pl.Boolean,
    },
    "queue": {  # written by push and pull with adaptive redundancy: where each human pair stands
        "pair_id": pl.String,
        "labels": pl.Int32,  # submitted labels so far
        "confidence": pl.Float64,  # probability its label is right now (the judge's calibrated one before any label)
        # most expected accuracy per further label (labeling/queue.py); 0: no label would change it
        "worth": pl.Float64,
        "state": pl.String,  # queued | settled | max_labels | closed | over_budget | not_started (labeling/queue.py)
    },
}
TABLES["gold_labels"] = TABLES["labels"]  # annotators' answers on gold records (pair_id is the record's id)

# columns added after runs were first written: a table from before reads with them null
ADDED = {
    "prompts": ("reference_answer", "tests"),
    "pair_judgments": ("p_chosen_ab", "p_chosen_ba"),
    "pairs": ("confidence", "signal_value"),
    "resolved": ("confidence", "method"),
    "annotators": ("reliability_low", "reliability_high", "basis"),
    "queue": ("worth",),
}


def empty(name: str) -> pl.DataFrame:
    return pl.DataFrame(schema=TABLES[name])


def conform(name: str, df: Frame) -> Frame:
    """Cast to the table's schema, in its column order; fail on a missing or extra column (a LazyFrame: when the
    casts run, for its types; at once for its columns)."""
    schema = TABLES[name]
    columns = df.collect_schema().names()
    late = [c for c in ADDED.get(name, ()) if c not in columns]
    if late:
        df = df.with_columns(pl.lit(None, dtype=schema[c]).alias(c) for c in late)
        columns += late
    missing = [c for c in schema if c not in columns]
    extra = [c for c in columns if c not in schema]
    if missing or extra:
        raise RunError(
            f"table {name!r} does not match its schema (missing {missing}, unexpected {extra})",
            hint="the run directory was written by another prefab version; re-run the stage",
        )
    try:
        return df.select([pl.col(c).cast(t, strict=True) for c, t in schema.items()])
    except pl.exceptions.PolarsError as e:
        raise RunError(f"table {name!r} has a column of the wrong type: {e}") from e
