"""Honest confidence of human labels (labeling/posterior.py) and the adaptive queue's plan (labeling/queue.py).

Expected values come from closed forms of the model, worked out here, not from the code under test: with an
annotator nothing is known about, P(label right) is the prior's mean (Beta-binomial marginal); with gold answers, an
annotator's accuracy is the Beta posterior mean (alpha + right) / (alpha + beta + answers).
"""

import numpy as np
import polars as pl
import pytest
from labeling_runs import make_run

from labeling.aggregate import bayesian, dawid_skene, prior_of, resolve_run
from labeling.posterior import Prior, fit
from labeling.queue import plan, worth
from labeling.settings import LabelingConfig
from pipeline.core.schema import TABLES
from training.export.stage import export
from training.settings import ExportConfig


def labels(rows: list[tuple]) -> pl.DataFrame:
    """A labels table of submitted labels: (pair_id, annotator, label)."""
    return pl.DataFrame(
        [{"pair_id": p, "annotator": a, "status": "submitted", "label": lab} for p, a, lab in rows],
        schema=TABLES["labels"],
    )


PRIOR = prior_of(LabelingConfig())


def test_one_label_from_one_annotator_without_gold_is_as_sure_as_the_prior_not_certain():
    resolved, model = bayesian(labels([("p1", "ann-1", "chosen")]), "drop", 1, None, prior=PRIOR, pair_prior={})
    row = resolved.row(0, named=True)
    # P(right) = E[p] under the prior when the pair's prior is 1/2: 0.70, the default's assumed accuracy
    assert row["preference"] == "chosen" and row["status"] == "resolved"
    assert row["confidence"] == pytest.approx(PRIOR.mean, abs=0.02)
    # crowd-kit's Dawid-Skene says 1.0 for the same label: the artifact this model replaces
    ds, _ = dawid_skene(labels([("p1", "ann-1", "chosen")]), "drop", 1, None)
    assert ds["confidence"][0] == pytest.approx(1.0)


def test_one_annotator_without_gold_stays_at_the_prior_however_consistent():
    """300 labels by one annotator on pairs the judge knows nothing about: nothing can tell their accuracy, so every
    label is stated right with the prior's probability, and the interval of the share right is wide and honest."""
    rows = [(f"p{i}", "solo", "chosen" if i % 3 else "rejected") for i in range(300)]
    resolved, model = bayesian(labels(rows), "drop", 1, None, prior=PRIOR, pair_prior={})
    assert resolved["confidence"].mean() == pytest.approx(PRIOR.mean, abs=0.02)
    mean, low, high = model.accuracy("solo")
    assert (
        mean == pytest.approx(PRIOR.mean, abs=0.03) and high - low > 0.3
    )  # the Beta(7, 3) prior's own 90% interval: 0.44-0.89
    stated = model.stated(resolved["pair_id"].to_list(), resolved["preference"].to_list())
    assert stated["low"] < 0.6 and stated["high"] > 0.8


def test_gold_answers_measure_an_annotator_and_move_the_confidence():
    gold = [(f"g{i}", "careful", "chosen" if i < 45 else "rejected") for i in range(50)]  # right on 45 of 50
    run = [("p1", "careful", "rejected")]
    resolved, model = bayesian(labels(run), "drop", 1, None, prior=PRIOR, pair_prior={}, gold_labels=labels(gold))
    expected = (PRIOR.alpha + 45) / (PRIOR.strength + 50)  # Beta posterior mean: 52 / 60
    assert model.accuracy("careful")[0] == pytest.approx(expected, abs=0.01)
    assert resolved.row(0, named=True)["preference"] == "rejected"
    assert resolved["confidence"][0] == pytest.approx(expected, abs=0.01)


def test_the_judges_calibrated_confidence_is_each_pairs_prior():
    """One label against a judge that gold shows right 90% of the time on this pair: Bayes' rule with the prior."""
    resolved, _ = bayesian(
        labels([("p1", "ann", "rejected")]), "drop", 1, None, prior=Prior(0.7, 1e6), pair_prior={"p1": 0.9}
    )
    # P(chosen | label rejected) = 0.9 * 0.3 / (0.9 * 0.3 + 0.1 * 0.7) = 0.794: the judge's side wins,
    # with that confidence
    assert resolved.row(0, named=True)["preference"] == "chosen"
    assert resolved["confidence"][0] == pytest.approx(0.27 / 0.34, abs=0.01)


def test_the_stated_interval_covers_the_truth_in_a_simulation():
    """Three annotators (90/80/60%), two labels per pair, pairs with a known prior: the stated share right is within
    two points of the true share, and its 90% interval holds it (one seed; the bench runs a hundred)."""
    rng = np.random.default_rng(7)
    accuracy = {"a90": 0.9, "a80": 0.8, "a60": 0.6}
    rows, truth, prior = [], {}, {}
    for i in range(600):
        q = rng.uniform(0.5, 0.8)
        prior[f"p{i}"], truth[f"p{i}"] = q, rng.random() < q
        for who in rng.choice(list(accuracy), 2, replace=False):
            right = rng.random() < accuracy[who]
            rows.append((f"p{i}", str(who), "chosen" if truth[f"p{i}"] == right else "rejected"))
    model = fit(labels(rows), PRIOR, prior)
    preference = ["chosen" if p >= 0.5 else "rejected" for p in model.p_chosen]
    true_share = np.mean([(pref == "chosen") == truth[t] for t, pref in zip(model.tasks, preference, strict=True)])
    stated = model.stated(model.tasks, preference)
    assert abs(stated["stated"] - true_share) < 0.02 and stated["low"] <= true_share <= stated["high"]
    assert [round(model.accuracy(w)[0], 1) for w in ("a60", "a80", "a90")] == [0.6, 0.8, 0.9]


def test_export_after_one_label_states_assumed_accuracy_with_an_interval(tmp_path):
    """The demo's situation: one annotator, one label, no gold answers yet; the card says assumed, not 100%."""
    run, config = make_run(tmp_path / "r", 4)
    human = run.read("pairs").filter(pl.col("route") == "human")["pair_id"].to_list()
    run.write("labels", labels([(human[0], "annotator-1", "chosen")]))
    export(run, ExportConfig(sources=["human"], test_share=0.0))
    card = (run.path / "exports" / "README.md").read_text()
    line = next(x for x in card.splitlines() if x.startswith("- human ("))
    assert "assumed" in line and "90% interval" in line and "100.0% right" not in line, line
    assert resolve_run(run, LabelingConfig()).resolved["confidence"][0] == pytest.approx(0.7, abs=0.02)


def queue_inputs(confidences: dict[str, float | None], counts: dict[str, int], resolved_conf: dict[str, float]):
    """(human pairs with the judge's confidence, resolved with the labels' confidence, labels: counts[p] per pair)."""
    human = pl.DataFrame(
        {"pair_id": list(confidences), "confidence": list(confidences.values())},
        schema={"pair_id": pl.String, "confidence": pl.Float64},
    )
    resolved = pl.DataFrame(
        [{"pair_id": p, "confidence": c} for p, c in resolved_conf.items()], schema=TABLES["resolved"]
    )
    return human, resolved, labels([(p, f"ann{k}", "chosen") for p, n in counts.items() for k in range(n)])


def test_queue_asks_again_only_below_the_target_and_never_past_the_maximum():
    human, resolved, given = queue_inputs(
        {"a": 0.6, "b": 0.6, "c": 0.6, "d": 0.7, "e": 0.55},
        {"a": 1, "b": 2, "c": 3, "d": 1},
        {"a": 0.95, "b": 0.8, "c": 0.8, "d": 0.85},
    )
    queue = plan(human, resolved, given, {"a", "b", "c", "d", "e"}, target=0.9, max_labels=3, budget=None)
    state = dict(queue.select("pair_id", "state").iter_rows())
    assert state == {"a": "settled", "b": "queued", "c": "max_labels", "d": "queued", "e": "queued"}
    assert dict(queue.select("pair_id", "labels").iter_rows()) == {"a": 1, "b": 2, "c": 3, "d": 1, "e": 0}
    # a pair that left Argilla with labels is never put back: whoever labeled it would see it again
    queue = plan(human, resolved, given, {"a", "b", "c", "e"}, target=0.9, max_labels=3, budget=None)
    assert dict(queue.select("pair_id", "state").iter_rows())["d"] == "closed"


def test_queue_keeps_within_the_label_budget_least_confident_first():
    human, resolved, given = queue_inputs({"a": 0.6, "b": 0.55, "c": 0.7, "d": 0.65}, {"a": 1}, {"a": 0.75})
    queue = plan(human, resolved, given, {"a", "b", "c", "d"}, target=0.9, max_labels=3, budget=6)
    state = dict(queue.select("pair_id", "state").iter_rows())
    # 1 label spent, 5 left; least confident first: b (0.55) may take 3, then d and c (3 each) do not fit in the 2 left,
    # and a (0.75 after its label) may take 2 more
    assert state == {"a": "queued", "b": "queued", "c": "not_started", "d": "not_started"}
    worst_case = sum(3 - n for n, s in zip(queue["labels"], queue["state"], strict=True) if s == "queued") + int(
        queue["labels"].sum()
    )
    assert worst_case <= 6


def test_a_pairs_worth_is_the_most_accuracy_per_label_its_remaining_labels_can_buy():
    # one label left, from an annotator right with P = a: it decides the pair where a > c, so it buys a - c
    assert worth([0.55, 0.8], ((0.9, 1),), 1) == pytest.approx([0.35, 0.1], abs=1e-6)
    assert worth([0.8], ((0.75, 1),), 1) == pytest.approx([0.0], abs=1e-6)  # a 0.75 label cannot overturn 0.8
    # two such labels can: the best plan asks one, and a second only when the first disagrees (P = d), after
    # which the pair stands at q = c (1 - a) / d and the second label decides it: it buys d (a - q) for 1 + d labels
    c, a = 0.8, 0.75
    d = c * (1 - a) + (1 - c) * a
    q = c * (1 - a) / d
    assert worth([c], ((a, 2),), 2) == pytest.approx([d * (a - q) / (1 + d)], abs=1e-6)


def test_the_budget_goes_where_labels_buy_most_not_to_the_least_confident():
    # x (0.62 after one label from "good") can only get its second label from "weak" (0.6): it cannot change x;
    # y (0.7, unlabeled) can get one from "good"; the budget pays for one more pair
    human, resolved, given = queue_inputs({"x": 0.55, "y": 0.7}, {}, {"x": 0.62})
    given = labels([("x", "good", "chosen")])
    queue = plan(
        human, resolved, given, {"x", "y"}, target=0.9, max_labels=2, budget=3, accuracy={"good": 0.9, "weak": 0.6}
    )
    state = dict(queue.select("pair_id", "state").iter_rows())
    assert state == {"x": "over_budget", "y": "queued"}, queue
    worths = dict(queue.select("pair_id", "worth").iter_rows())
    # y's next label is from either annotator: one label alone buys (0.9 - 0.7) / 2; looking ahead buys more
    assert worths["x"] == 0.0 and worths["y"] > (0.9 - 0.7) / 2, worths


def test_a_pair_labeled_mostly_tie_or_both_bad_resolves_by_count_without_a_confidence():
    rows = [
        ("p1", "a", "both_bad"),
        ("p1", "b", "both_bad"),
        ("p1", "c", "chosen"),
        ("p2", "a", "tie"),
        ("p2", "b", "chosen"),
    ]
    resolved, _ = bayesian(labels(rows), "drop", 1, None, prior=PRIOR, pair_prior={})
    got = {r["pair_id"]: (r["preference"], r["status"], r["confidence"]) for r in resolved.iter_rows(named=True)}
    # p1: two of three say both are bad; p2: one side against one "tie" is not mostly sideless, so the side wins
    assert got["p1"] == ("both_bad", "resolved", None)
    assert got["p2"][:2] == ("chosen", "resolved") and got["p2"][2] == pytest.approx(PRIOR.mean, abs=0.03)
