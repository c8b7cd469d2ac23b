"""One resolution of human labels into a preference per pair, with a confidence: used by pull and by export alike.

- bayesian (default): labeling/posterior.py, a one-coin model with a prior on annotator accuracy, the judge's
  calibrated confidence as each pair's prior, and the gold pairs mixed into the queue as answers whose truth is
  known. The confidence is the posterior probability that the preference is right, honest also where nothing
  but the prior speaks (one annotator, no gold answers yet).
- dawid_skene: crowd-kit's Dawid-Skene, which estimates each annotator's confusion matrix and weighs their
  labels by it (gold pairs enter with their known answer, `true_labels`); optionally each judge votes as one more
  annotator. Its posterior is a fit's: with one annotator and no gold it says 1.0.
- majority: the commonest label; a split vote follows the tie rule; the confidence is the share of annotators
  behind the winner (agreement, not a probability).

And the annotators' quality: accuracy on gold with a 95% interval, agreement with the others, labeling speed,
the model's estimate of their accuracy, and a flag below `min_annotator_accuracy`.
"""

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import polars as pl

from labeling.agreement import CATEGORIES, judge_labels, submitted
from pipeline.core.schema import TABLES, empty
from pipeline.core.stats import wilson

if TYPE_CHECKING:  # the model's module loads scipy: not at import time
    from labeling.posterior import Fit, Prior

GOLD_TRUTH = "chosen"  # gold records are oriented so that the people's choice is "chosen"
BREAK_SECONDS = 600  # a gap longer than this between two submissions is a break, not labeling time
CALIBRATION_DRAWS = 20  # refits of the judge's calibration behind each pair's prior (bayesian)


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
    verdict = (judge or {}).get(
        pair_id, "chosen"
    )  # pairs are oriented by the judge: "chosen" when it said nothing else
    if tie_rule == "judge" and verdict in leaders:
        return verdict, "resolved"
    return None, "split"


def _resolve(
    labels: pl.DataFrame, method: str, tie_rule: str, min_submitted: int, judge: dict | None, probas=None
) -> pl.DataFrame:
    """One row per pair: its preference, status and confidence,
    from vote counts (majority) or posteriors (dawid_skene)."""
    rows = []
    for (pair_id,), group in labels.group_by("pair_id", maintain_order=True):
        votes = submitted(group)["label"].to_list()
        n = len(votes)
        row = {
            "pair_id": pair_id,
            "n_labels": n,
            "preference": None,
            "agreement": None,
            "confidence": None,
            "method": method,
        }
        status = _status(group, n, min_submitted)
        if status is None:
            counts = {label: votes.count(label) for label in sorted(set(votes))}
            score = (
                {k: c / n for k, c in counts.items()}
                if probas is None
                else {str(k): float(v) for k, v in probas.loc[pair_id].items()}
            )
            top = max(score.values())
            row["preference"], status = _break_tie(
                pair_id, sorted(k for k, v in score.items() if abs(v - top) < 1e-9), tie_rule, judge
            )
            row["agreement"] = max(counts.values()) / n
            if probas is None and row["preference"] is not None:
                row["confidence"] = top  # majority: the share behind the winner, whichever way a split was broken
            elif row["preference"] in score:
                row["confidence"] = round(score[row["preference"]], 6)
        rows.append(row | {"status": status})
    return pl.DataFrame(rows, schema=TABLES["resolved"], orient="row") if rows else empty("resolved")


def majority(labels: pl.DataFrame, tie_rule: str, min_submitted: int, judge: dict | None) -> pl.DataFrame:
    return _resolve(labels, "majority", tie_rule, min_submitted, judge)


def dawid_skene(
    labels: pl.DataFrame,
    tie_rule: str,
    min_submitted: int,
    judge: dict | None,
    gold_labels: pl.DataFrame | None = None,
    judge_votes: pl.DataFrame | None = None,
) -> tuple[pl.DataFrame, dict]:
    """Resolved pairs with Dawid-Skene posteriors, and each annotator's estimated reliability."""
    import pandas as pd  # start-up: pandas
    from crowdkit.aggregation import DawidSkene  # start-up: crowdkit

    run = submitted(labels).select("pair_id", "annotator", "label")
    gold = submitted(gold_labels).select("pair_id", "annotator", "label") if gold_labels is not None else run.clear()
    # gold labels say "chosen" when right; half of the gold tasks are mirrored (truth "rejected") so that gold informs
    # both rows of each annotator's confusion matrix, not only the "chosen" one (measured: all-"chosen" gold made
    # Dawid-Skene treat "rejected" as a rare class and do worse than without gold)
    mirrored = pl.col("pair_id").hash(0) % 2 == 1
    gold = gold.with_columns(
        label=pl.when(mirrored)
        .then(pl.col("label").replace({"chosen": "rejected", "rejected": "chosen"}))
        .otherwise(pl.col("label"))
    )
    votes = judge_votes.select("pair_id", "annotator", "label") if judge_votes is not None else run.clear()
    data = pl.concat(
        [
            run,
            gold,
            votes.filter(
                pl.col("pair_id").is_in(run["pair_id"].unique().to_list() + gold["pair_id"].unique().to_list())
            ),
        ]
    )
    probas, reliability = None, {}
    if run.height:
        frame = pd.DataFrame(
            {"task": data["pair_id"].to_list(), "worker": data["annotator"].to_list(), "label": data["label"].to_list()}
        )
        flips = dict(gold.select("pair_id", mirrored.alias("m")).unique().iter_rows())
        truth = pd.Series({t: "rejected" if m else GOLD_TRUTH for t, m in flips.items()}, dtype=object)
        with warnings.catch_warnings():  # crowd-kit 1.4.2 uses pandas keywords that pandas 3 deprecates
            warnings.simplefilter("ignore")
            model = DawidSkene(n_iter=100).fit(frame, true_labels=truth if len(truth) else None)
        probas = model.probas_
        # an annotator's reliability: how probable, after the fit, the labels they gave are (gold tasks: their truth)
        right = [
            float(probas.at[t, label]) if label in probas.columns else 0.0
            for t, label in zip(frame["task"], frame["label"], strict=True)
        ]
        reliability = {
            w: round(float(v), 4) for w, v in pd.Series(right).groupby(frame["worker"].to_numpy()).mean().items()
        }
    return _resolve(labels, "dawid_skene", tie_rule, min_submitted, judge, probas), reliability


def prior_of(labeling) -> "Prior":
    from labeling.posterior import Prior  # start-up: pydantic, rich.console, rich.progress, rich.table, scipy, yaml

    return Prior(labeling.prior_accuracy, labeling.prior_strength)


def bayesian(
    labels: pl.DataFrame,
    tie_rule: str,
    min_submitted: int,
    judge: dict | None,
    *,
    prior,
    pair_prior: dict[str, float],
    prior_draws: dict | None = None,
    gold_labels: pl.DataFrame | None = None,
    judge_votes: pl.DataFrame | None = None,
) -> tuple[pl.DataFrame, "Fit"]:
    """Resolved pairs with the one-coin model's posteriors (labeling/posterior.py), and the fit.

    A pair whose labels are mostly "tie" or "both_bad" resolves to the commoner of the two, by count and with no
    confidence: the model knows annotators' accuracy on which side is better, not on whether both are.
    """
    from labeling.posterior import (  # start-up: pydantic, rich.console, rich.progress, rich.table, scipy, yaml
        SIDES,
        fit,
    )

    run = submitted(labels).select("pair_id", "annotator", "label")
    gold = submitted(gold_labels).select("pair_id", "annotator", "label") if gold_labels is not None else run.clear()
    judges = judge_votes.select("pair_id", "annotator", "label") if judge_votes is not None else run.clear()
    tasks = set(run["pair_id"].to_list()) | set(gold["pair_id"].to_list())
    data = pl.concat([run, gold, judges.filter(pl.col("pair_id").is_in(list(tasks)))])
    model = fit(
        data, prior, pair_prior, {g: GOLD_TRUTH for g in gold["pair_id"].unique().to_list()}, prior_draws=prior_draws
    )
    p_chosen = dict(zip(model.tasks, model.p_chosen.tolist(), strict=True))
    rows = []
    for (pair_id,), group in labels.group_by("pair_id", maintain_order=True):
        votes = submitted(group)["label"].to_list()
        n = len(votes)
        row = {
            "pair_id": pair_id,
            "n_labels": n,
            "preference": None,
            "agreement": None,
            "confidence": None,
            "method": "bayesian",
        }
        status = _status(group, n, min_submitted)
        if status is None:
            counts = {label: votes.count(label) for label in sorted(set(votes))}
            row["agreement"] = max(counts.values()) / n
            sideless = {k: c for k, c in counts.items() if k not in SIDES}
            if sum(sideless.values()) > n - sum(sideless.values()):  # mostly "tie" or "both_bad"
                top = max(sideless.values())
                row["preference"], status = _break_tie(
                    pair_id, sorted(k for k, c in sideless.items() if c == top), tie_rule, judge
                )
            else:
                p = p_chosen[pair_id]
                leaders = ["chosen"] if p > 0.5 + 1e-9 else ["rejected"] if p < 0.5 - 1e-9 else ["chosen", "rejected"]
                row["preference"], status = _break_tie(pair_id, leaders, tie_rule, judge)
                if row["preference"] in SIDES:
                    row["confidence"] = round(p if row["preference"] == "chosen" else 1 - p, 6)
        rows.append(row | {"status": status})
    resolved = pl.DataFrame(rows, schema=TABLES["resolved"], orient="row") if rows else empty("resolved")
    return resolved, model


def annotator_quality(
    labels: pl.DataFrame, gold_labels: pl.DataFrame, reliability: dict, *, min_accuracy: float, min_gold: int
) -> pl.DataFrame:
    """The `annotators` table: accuracy on gold (wrong, tie and both-bad all miss),
    agreement, speed, reliability, flag."""
    run, gold = submitted(labels), submitted(gold_labels)
    both = pl.concat([run.select("annotator", "updated_at"), gold.select("annotator", "updated_at")])
    names = sorted(set(both["annotator"].to_list()))
    others = run.join(
        run.select("pair_id", pl.col("annotator").alias("other"), pl.col("label").alias("other_label")), on="pair_id"
    )
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
        rows.append(
            {
                "annotator": name,
                "labels": run.filter(pl.col("annotator") == name).height,
                "gold_answers": len(answers),
                "gold_accuracy": round(accuracy, 4) if accuracy is not None else None,
                "gold_low": low,
                "gold_high": high,
                "agreement": round(float((mine["label"] == mine["other_label"]).mean()), 4) if mine.height else None,
                "median_seconds": round(float(pl.Series(gaps).median()), 1) if gaps else None,
                "reliability": reliability.get(name),
                "reliability_low": None,
                "reliability_high": None,
                "basis": None,
                "flagged": bool(accuracy is not None and len(answers) >= min_gold and accuracy < min_accuracy),
            }
        )
    return pl.DataFrame(rows, schema=TABLES["annotators"], orient="row") if rows else empty("annotators")


def judge_vote_rows(pair_ids: list[str], verdicts: dict[str, str]) -> pl.DataFrame:
    """The judges' verdicts as labels of one more annotator, "judge" (chosen/rejected/tie relative to each pair)."""
    rows = [
        {"pair_id": p, "annotator": "judge", "label": verdicts[p]} for p in pair_ids if verdicts.get(p) in CATEGORIES
    ]
    return pl.DataFrame(rows, schema={"pair_id": pl.String, "annotator": pl.String, "label": pl.String})


def gold_verdicts(gold_judgments: pl.DataFrame) -> dict[str, str]:
    """Gold record id -> the judges' pairwise verdict on it (measured by calibrate), decided as on the run's
    pairs: verdicts that held in both orders, no failed call, the majority over judges."""
    from labeling.dataset import pairwise_verdicts  # start-up: pydantic, yaml
    from labeling.push import gold_record_id  # start-up: httpx, pydantic, rich.console, rich.progress, rich.table, yaml

    if gold_judgments.is_empty():
        return {}
    rows = gold_judgments.select(
        pl.col("gold_id").map_elements(gold_record_id, return_dtype=pl.String).alias("pair_id"),
        "judge",
        "verdict_ab",
        (pl.col("verdict_ab") == pl.col("verdict_ba")).alias("consistent"),
        pl.lit(None, pl.Float64).alias("confidence"),
        "error",
    )
    return {pair: v["label"] for pair, v in pairwise_verdicts(rows).items()}


@dataclass
class Resolution:
    """What a resolution of the labels gives: each pair's preference, the annotators, and the model (bayesian)."""

    resolved: pl.DataFrame
    annotators: pl.DataFrame
    model: "Fit | None" = None
    prior: "Prior | None" = None

    def stated(self, pair_ids: list[str], preferences: list[str]) -> dict:
        """The model's stated accuracy of these resolved labels with its interval (labeling/posterior.py), and the
        annotators whose accuracy still rests on the prior ("assumed"): pull and the dataset card say the same."""
        return self.model.stated(pair_ids, preferences) | {
            "assumed": self.annotators.filter(pl.col("basis") != "measured")["annotator"].to_list()
        }


def pair_priors(pairs: pl.DataFrame) -> dict[str, float]:
    """P(chosen) of each pair before any person: the judge's confidence calibrated on gold (route),
    where there is one."""
    if "confidence" not in pairs.columns or pairs.is_empty():
        return {}
    return dict(pairs.filter(pl.col("confidence").is_not_null()).select("pair_id", "confidence").iter_rows())


def pair_prior_draws(run, pairs: pl.DataFrame, seed: int = 0) -> dict | None:
    """Each pair's prior under CALIBRATION_DRAWS refits of the judge's calibration on resampled gold pairs (the signal
    route chose), so that the stated accuracy of human labels carries the calibration's own uncertainty."""
    from pipeline.stages.calibrate import (  # start-up: pydantic, rich.console, rich.progress, rich.table, yaml
        calibrated_draws,
    )

    signal = (run.stage_info("route").get("routing") or {}).get("signal")
    if not signal or not run.has("gold_signals") or "signal_value" not in pairs.columns:
        return None
    gold = run.read("gold_signals").filter(pl.col("signal") == signal)
    known = pairs.filter(pl.col("signal_value").is_not_null() & pl.col("confidence").is_not_null())
    if gold.is_empty() or known.is_empty():
        return None
    draws = calibrated_draws(
        gold["confidence"].to_numpy(),
        gold["correct"].to_numpy(),
        known["signal_value"].to_numpy(),
        CALIBRATION_DRAWS,
        seed,
    )
    return dict(zip(known["pair_id"].to_list(), draws.T, strict=True))


def resolve_labels(
    labels: pl.DataFrame,
    gold_labels: pl.DataFrame,
    judge: dict[str, str],
    gold_judgments: pl.DataFrame,
    labeling,
    pair_prior: dict[str, float] | None = None,
    prior_draws: dict | None = None,
) -> Resolution:
    """Flags from gold first, then the configured aggregation without (or with) the flagged."""
    quality = annotator_quality(
        labels, gold_labels, {}, min_accuracy=labeling.min_annotator_accuracy, min_gold=labeling.min_gold_answers
    )
    flagged = quality.filter(pl.col("flagged"))["annotator"].to_list()
    if labeling.flagged == "exclude" and flagged:
        # their labels no longer count, but stay in `labels`: a pair labeled only by them is pending again, not lost
        leave_out = (
            pl.when(pl.col("annotator").is_in(flagged))
            .then(pl.lit("excluded"))
            .otherwise(pl.col("status"))
            .alias("status")
        )
        labels, gold_labels = labels.with_columns(leave_out), gold_labels.with_columns(leave_out)
    min_submitted = 1 if labeling.redundancy == "adaptive" else labeling.min_submitted
    if labeling.aggregation == "majority":
        return Resolution(majority(labels, labeling.tie_rule, min_submitted, judge), quality)
    votes = None
    if labeling.judges_vote:
        verdicts = {**gold_verdicts(gold_judgments), **judge}
        votes = judge_vote_rows(
            labels["pair_id"].unique().to_list() + gold_labels["pair_id"].unique().to_list(), verdicts
        )
    if labeling.aggregation == "dawid_skene":
        resolved, reliability = dawid_skene(labels, labeling.tie_rule, min_submitted, judge, gold_labels, votes)
        return Resolution(
            resolved,
            quality.with_columns(
                pl.col("annotator")
                .replace_strict(reliability, default=None, return_dtype=pl.Float64)
                .alias("reliability")
            ),
        )
    prior = prior_of(labeling)
    resolved, model = bayesian(
        labels,
        labeling.tie_rule,
        min_submitted,
        judge,
        prior=prior,
        pair_prior=pair_prior or {},
        prior_draws=prior_draws,
        gold_labels=gold_labels,
        judge_votes=votes,
    )
    estimates = {w: model.accuracy(w) for w in model.workers}
    basis = {
        r["annotator"]: "measured" if r["gold_answers"] >= labeling.min_gold_answers else "assumed"
        for r in quality.iter_rows(named=True)
    }
    columns = {"reliability": 0, "reliability_low": 1, "reliability_high": 2}
    quality = quality.with_columns(
        *(
            pl.col("annotator")
            .replace_strict({w: round(e[i], 4) for w, e in estimates.items()}, default=None, return_dtype=pl.Float64)
            .alias(name)
            for name, i in columns.items()
        ),
        pl.col("annotator").replace_strict(basis, default=None, return_dtype=pl.String).alias("basis"),
    )
    return Resolution(resolved, quality, model, prior)


def resolve_run(run, labeling) -> Resolution:
    """The run's labels resolved as they are now: the one resolution pull and export share."""
    pairs = run.read_or_empty("pairs")
    judge = judge_labels(pairs, run.read_or_empty("pair_judgments"))
    return resolve_labels(
        run.read_or_empty("labels"),
        run.read_or_empty("gold_labels"),
        judge,
        run.read_or_empty("gold_judgments"),
        labeling,
        pair_priors(pairs),
        pair_prior_draws(run, pairs),
    )
