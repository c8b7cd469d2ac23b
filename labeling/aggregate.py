"""One resolution of human labels into a preference per pair, with a confidence: used by pull and by export alike.

- majority: the commonest label; a split vote follows the tie rule; the confidence is the share of annotators
  behind the winner (agreement, not a probability).
- dawid_skene (default): crowd-kit's Dawid-Skene, which estimates each annotator's confusion matrix and weighs
  their labels by it. The gold pairs mixed into the queue enter with their known answer (`true_labels`), so an
  annotator's reliability rests on gold as well as on agreement; optionally each judge votes as one more
  annotator, weighed the same way. The confidence is the posterior probability of the winning label.

And the annotators' quality: accuracy on gold with a 95% interval, agreement with the others, labeling speed,
Dawid-Skene's reliability estimate, and a flag below `min_annotator_accuracy`.
"""

import warnings

import polars as pl

from labeling.agreement import CATEGORIES
from pipeline.calibrate import wilson
from pipeline.schema import TABLES, empty

GOLD_TRUTH = "chosen"  # gold records are oriented so that the people's choice is "chosen"
BREAK_SECONDS = 600  # a gap longer than this between two submissions is a break, not labeling time


def submitted(labels: pl.DataFrame) -> pl.DataFrame:
    return labels.filter((pl.col("status") == "submitted") & pl.col("label").is_not_null())


def _status(group: pl.DataFrame, n: int, min_submitted: int) -> str | None:
    """pending/discarded for a pair that cannot be resolved yet; None when it can."""
    if n == 0:
        return "discarded" if group.height and (group["status"] == "discarded").any() else "pending"
    return "pending" if n < min_submitted else None


def _break_tie(pair_id: str, leaders: list[str], tie_rule: str, judge: dict | None) -> tuple[str | None, str]:
    if len(leaders) == 1:
        return leaders[0], "resolved"
    if tie_rule == "tie":
        return "tie", "resolved"
    verdict = (judge or {}).get(pair_id, "chosen")  # pairs are oriented by the judge: "chosen" when it said nothing else
    if tie_rule == "judge" and verdict in leaders:
        return verdict, "resolved"
    return None, "split"


def _resolve(labels: pl.DataFrame, method: str, tie_rule: str, min_submitted: int, judge: dict | None, probas=None) -> pl.DataFrame:
    """One row per pair: its preference, status and confidence, from vote counts (majority) or posteriors (dawid_skene)."""
    rows = []
    for (pair_id,), group in labels.group_by("pair_id", maintain_order=True):
        votes = submitted(group)["label"].to_list()
        n = len(votes)
        row = {"pair_id": pair_id, "n_labels": n, "preference": None, "agreement": None, "confidence": None, "method": method}
        status = _status(group, n, min_submitted)
        if status is None:
            counts = {label: votes.count(label) for label in sorted(set(votes))}
            score = {k: c / n for k, c in counts.items()} if probas is None else {str(k): float(v) for k, v in probas.loc[pair_id].items()}
            top = max(score.values())
            row["preference"], status = _break_tie(pair_id, sorted(k for k, v in score.items() if abs(v - top) < 1e-9), tie_rule, judge)
            row["agreement"] = max(counts.values()) / n
            if probas is None and row["preference"] is not None:
                row["confidence"] = top  # majority: the share behind the winner, whichever way a split was broken
            elif row["preference"] in score:
                row["confidence"] = round(score[row["preference"]], 6)
        rows.append(row | {"status": status})
    return pl.DataFrame(rows, schema=TABLES["resolved"], orient="row") if rows else empty("resolved")


def majority(labels: pl.DataFrame, tie_rule: str, min_submitted: int, judge: dict | None) -> pl.DataFrame:
    return _resolve(labels, "majority", tie_rule, min_submitted, judge)


def dawid_skene(labels: pl.DataFrame, tie_rule: str, min_submitted: int, judge: dict | None,
                gold_labels: pl.DataFrame | None = None, judge_votes: pl.DataFrame | None = None) -> tuple[pl.DataFrame, dict]:
    """Resolved pairs with Dawid-Skene posteriors, and each annotator's estimated reliability."""
    import pandas as pd
    from crowdkit.aggregation import DawidSkene

    run = submitted(labels).select("pair_id", "annotator", "label")
    gold = submitted(gold_labels).select("pair_id", "annotator", "label") if gold_labels is not None else run.clear()
    # gold labels say "chosen" when right; half of the gold tasks are mirrored (truth "rejected") so that gold informs
    # both rows of each annotator's confusion matrix, not only the "chosen" one (measured: all-"chosen" gold made
    # Dawid-Skene treat "rejected" as a rare class and do worse than without gold)
    mirrored = pl.col("pair_id").hash(0) % 2 == 1
    gold = gold.with_columns(label=pl.when(mirrored).then(pl.col("label").replace({"chosen": "rejected", "rejected": "chosen"}))
                             .otherwise(pl.col("label")))
    votes = judge_votes.select("pair_id", "annotator", "label") if judge_votes is not None else run.clear()
    data = pl.concat([run, gold, votes.filter(pl.col("pair_id").is_in(run["pair_id"].unique().to_list()
                                                                      + gold["pair_id"].unique().to_list()))])
    probas, reliability = None, {}
    if run.height:
        frame = pd.DataFrame({"task": data["pair_id"].to_list(), "worker": data["annotator"].to_list(), "label": data["label"].to_list()})
        flips = dict(gold.select("pair_id", mirrored.alias("m")).unique().iter_rows())
        truth = pd.Series({t: "rejected" if m else GOLD_TRUTH for t, m in flips.items()}, dtype=object)
        with warnings.catch_warnings():  # crowd-kit 1.4.2 uses pandas keywords that pandas 3 deprecates
            warnings.simplefilter("ignore")
            model = DawidSkene(n_iter=100).fit(frame, true_labels=truth if len(truth) else None)
        probas = model.probas_
        # an annotator's reliability: how probable, after the fit, the labels they gave are (gold tasks: their truth)
        right = [float(probas.at[t, label]) if label in probas.columns else 0.0 for t, label in zip(frame["task"], frame["label"])]
        reliability = {w: round(float(v), 4) for w, v in pd.Series(right).groupby(frame["worker"].to_numpy()).mean().items()}
    return _resolve(labels, "dawid_skene", tie_rule, min_submitted, judge, probas), reliability


def annotator_quality(labels: pl.DataFrame, gold_labels: pl.DataFrame, reliability: dict, *, min_accuracy: float,
                      min_gold: int) -> pl.DataFrame:
    """The `annotators` table: accuracy on gold (wrong, tie and both-bad all miss), agreement, speed, reliability, flag."""
    run, gold = submitted(labels), submitted(gold_labels)
    both = pl.concat([run.select("annotator", "updated_at"), gold.select("annotator", "updated_at")])
    names = sorted(set(both["annotator"].to_list()))
    others = run.join(run.select("pair_id", pl.col("annotator").alias("other"), pl.col("label").alias("other_label")), on="pair_id")
    others = others.filter(pl.col("annotator") != pl.col("other"))
    rows = []
    for name in names:
        answers = gold.filter(pl.col("annotator") == name)["label"].to_list()
        right = sum(a == GOLD_TRUTH for a in answers)
        low, high = wilson(right, len(answers))
        accuracy = right / len(answers) if answers else None
        mine = others.filter(pl.col("annotator") == name)
        times = both.filter(pl.col("annotator") == name)["updated_at"].drop_nulls().sort()
        gaps = [g for g in times.diff().dt.total_seconds().drop_nulls().to_list() if 0 < g <= BREAK_SECONDS]
        rows.append({"annotator": name, "labels": run.filter(pl.col("annotator") == name).height, "gold_answers": len(answers),
                     "gold_accuracy": round(accuracy, 4) if accuracy is not None else None, "gold_low": low, "gold_high": high,
                     "agreement": round(float((mine["label"] == mine["other_label"]).mean()), 4) if mine.height else None,
                     "median_seconds": round(float(pl.Series(gaps).median()), 1) if gaps else None,
                     "reliability": reliability.get(name),
                     "flagged": bool(accuracy is not None and len(answers) >= min_gold and accuracy < min_accuracy)})
    return pl.DataFrame(rows, schema=TABLES["annotators"], orient="row") if rows else empty("annotators")


def judge_vote_rows(pair_ids: list[str], verdicts: dict[str, str]) -> pl.DataFrame:
    """The judges' verdicts as labels of one more annotator, "judge" (chosen/rejected/tie relative to each pair)."""
    rows = [{"pair_id": p, "annotator": "judge", "label": verdicts[p]} for p in pair_ids if verdicts.get(p) in CATEGORIES]
    return pl.DataFrame(rows, schema={"pair_id": pl.String, "annotator": pl.String, "label": pl.String})


def gold_verdicts(gold_judgments: pl.DataFrame) -> dict[str, str]:
    """Gold record id -> the judges' pairwise verdict on it (measured by calibrate), decided as on the run's
    pairs: verdicts that held in both orders, no failed call, the majority over judges."""
    from labeling.dataset import pairwise_verdicts
    from labeling.push import gold_record_id

    if gold_judgments.is_empty():
        return {}
    rows = gold_judgments.select(
        pl.col("gold_id").map_elements(gold_record_id, return_dtype=pl.String).alias("pair_id"), "judge", "verdict_ab",
        (pl.col("verdict_ab") == pl.col("verdict_ba")).alias("consistent"), pl.lit(None, pl.Float64).alias("confidence"), "error")
    return {pair: v["label"] for pair, v in pairwise_verdicts(rows).items()}


def resolve_labels(labels: pl.DataFrame, gold_labels: pl.DataFrame, judge: dict[str, str], gold_judgments: pl.DataFrame,
                   labeling) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(resolved, annotators): flags from gold first, then the configured aggregation without (or with) the flagged."""
    quality = annotator_quality(labels, gold_labels, {}, min_accuracy=labeling.min_annotator_accuracy, min_gold=labeling.min_gold_answers)
    flagged = quality.filter(pl.col("flagged"))["annotator"].to_list()
    if labeling.flagged == "exclude" and flagged:
        # their labels no longer count, but stay in `labels`: a pair labeled only by them is pending again, not lost
        leave_out = pl.when(pl.col("annotator").is_in(flagged)).then(pl.lit("excluded")).otherwise(pl.col("status")).alias("status")
        labels, gold_labels = labels.with_columns(leave_out), gold_labels.with_columns(leave_out)
    if labeling.aggregation == "majority":
        return majority(labels, labeling.tie_rule, labeling.min_submitted, judge), quality
    votes = None
    if labeling.judges_vote:
        verdicts = {**gold_verdicts(gold_judgments), **judge}
        votes = judge_vote_rows(labels["pair_id"].unique().to_list() + gold_labels["pair_id"].unique().to_list(), verdicts)
    resolved, reliability = dawid_skene(labels, labeling.tie_rule, labeling.min_submitted, judge, gold_labels, votes)
    return resolved, quality.with_columns(pl.col("annotator").replace_strict(reliability, default=None, return_dtype=pl.Float64)
                                          .alias("reliability"))


def resolve_run(run, labeling) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(resolved, annotators) from the run's labels as they are now: the one resolution pull and export share."""
    from labeling.agreement import judge_labels

    judge = judge_labels(run.read_or_empty("pairs"), run.read_or_empty("pair_judgments"))
    return resolve_labels(run.read_or_empty("labels"), run.read_or_empty("gold_labels"), judge, run.read_or_empty("gold_judgments"), labeling)
