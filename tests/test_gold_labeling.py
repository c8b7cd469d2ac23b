"""Gold pairs mixed into the annotators' queue on the real embedded Argilla: indistinguishable through the API an
annotator can call, answers mapped back to an accuracy per annotator, a careless annotator flagged and left out,
gold never exported; and the one resolution (Dawid-Skene with gold) that pull and export share."""

import json
import re

import polars as pl
import pytest
from labeling_fixtures import unique
from labeling_runs import make_run
from test_push_pull import annotator, labels_frame, my_records, respond

from labeling.aggregate import annotator_quality, dawid_skene, gold_verdicts
from labeling.push import gold_record_id
from labeling.settings import LabelingConfig
from pipeline.core.config import CalibrateConfig
from pipeline.stages.gold import read_gold


def add_gold(run, tmp_path, n=12):
    rows = [
        {
            "prompt": f"Extra question {k}: what is {k} times 3?",
            "chosen": f"{3 * k}.",
            "rejected": f"{3 * k + 2}, roughly.",
            "source": "test-gold",
        }
        for k in range(n)
    ]
    path = tmp_path / "gold.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run.write("gold", read_gold(CalibrateConfig(gold=[str(path)])))
    return rows


def test_dawid_skene_weighs_annotators_by_gold_and_gives_confidences():
    # three annotators on 30 pairs whose truth is "chosen": good is always right, fair mostly, bad always wrong;
    # every pair is labeled by bad and one other; gold shows bad for what they are
    rows, gold = [], []
    for i in range(30):
        rows += [
            (f"p{i}", "bad", "rejected"),
            (f"p{i}", "good" if i % 2 else "fair", "chosen" if i % 2 or i % 6 else "rejected"),
        ]
    for i in range(8):
        gold += [(f"g{i}", "bad", "rejected"), (f"g{i}", "good", "chosen"), (f"g{i}", "fair", "chosen")]
    resolved, reliability = dawid_skene(labels_frame(rows), "drop", 1, None, labels_frame(gold))
    # every pair is a 1-1 split that majority cannot resolve; Dawid-Skene sides with whoever is not "bad"
    other = {p: label for p, who, label in rows if who != "bad"}
    assert dict(zip(resolved["pair_id"], resolved["preference"], strict=True)) == other
    assert min(reliability["good"], reliability["fair"]) > 0.8 and reliability["bad"] < 0.5
    assert resolved["confidence"].min() > 0.5 and resolved["method"][0] == "dawid_skene"
    quality = annotator_quality(labels_frame(rows), labels_frame(gold), reliability, min_accuracy=0.7, min_gold=5)
    flagged = dict(zip(quality["annotator"], quality["flagged"], strict=True))
    assert flagged == {"bad": True, "fair": False, "good": False}


def test_judges_vote_on_gold_by_majority_of_consistent_answered_verdicts():
    """With judges_vote, the judges' verdicts on gold come from calibrate's gold_judgments, decided as on the
    run's pairs: the majority of the judges whose verdict held in both orders; a failed call is no vote."""
    rows = [
        ("g1", "a-failed", None, None, "HTTP 500"),
        ("g1", "b-dissents", "rejected", "rejected", None),
        ("g1", "c", "chosen", "chosen", None),
        ("g1", "d", "chosen", "chosen", None),
        ("g2", "c", "chosen", "rejected", None),  # flipped with the order: no vote
        ("g3", "b-dissents", "tie", "tie", None),
    ]
    frame = pl.DataFrame(rows, schema=["gold_id", "judge", "verdict_ab", "verdict_ba", "error"], orient="row")
    assert gold_verdicts(frame) == {gold_record_id("g1"): "chosen", gold_record_id("g3"): "tie"}
    assert gold_verdicts(frame.clear()) == {}


@pytest.mark.server
def test_gold_is_mixed_in_unmarked_and_measures_annotators(argilla_client, prefab, tmp_path):
    labeling = LabelingConfig(gold_share=0.4, min_gold_answers=3, min_annotator_accuracy=0.7, judge_hint="none")
    run, _ = make_run(
        tmp_path / unique("gold"), 16, labeling=labeling, with_vectors=False
    )  # its vectors are random 8-d ones
    run.update_manifest(config={**run.manifest()["config"], "labeling": labeling.model_dump(mode="json")})
    gold_rows = add_gold(run, tmp_path)
    result = prefab("push", "--run", run.path)
    assert result.exit_code == 0, result.output
    info = run.stage_info("push")
    human = run.read("pairs").filter(pl.col("route") == "human").height
    assert info["gold_pushed"] == round(human * 0.4 / 0.6) and info["pushed"] == human + info["gold_pushed"]

    dataset = argilla_client.datasets(name=run.path.name, workspace="prefab")
    careful, careless = annotator(argilla_client, "careful"), annotator(argilla_client, "careless")
    seen = my_records(careful, dataset.id)
    assert len(seen) == info["pushed"]
    # through the API an annotator can call, every record has the same shape: no gold flag, answer, or missing vector
    full = [careful.api.http_client.get(f"/api/v1/records/{r['id']}").json() for r in seen]
    assert len({tuple(sorted(r["metadata"])) for r in full}) == 1
    assert len({tuple(sorted(r["vectors"] or {})) for r in full}) == 1
    assert all(len(r["external_id"]) == 16 and r["suggestions"] == [] for r in full)
    assert not any("gold" in json.dumps(r).lower() for r in full)

    better = {g["chosen"] for g in gold_rows} | set(
        run.read("candidates")
        .filter(pl.col("candidate_id").is_in(run.read("pairs")["chosen_id"].to_list()))["text"]
        .to_list()
    )
    for client, right in ((careful, True), (careless, False)):
        for record in my_records(client, dataset.id):
            a_better = record["fields"]["response_a"] in better
            respond(client, record["id"], preference="a" if a_better == right else "b")

    result = prefab("pull", "--run", run.path)
    assert result.exit_code == 0, result.output
    quality = {r["annotator"]: r for r in run.read("annotators").iter_rows(named=True)}
    careful_name = next(n for n in quality if n.startswith("careful"))
    careless_name = next(n for n in quality if n.startswith("careless"))
    assert quality[careful_name]["gold_accuracy"] == 1.0 and not quality[careful_name]["flagged"]
    assert quality[careless_name]["gold_accuracy"] == 0.0 and quality[careless_name]["flagged"]
    assert quality[careful_name]["gold_answers"] == info["gold_pushed"]
    assert careless_name in run.stage_info("pull")["flagged_annotators"]
    # gold answers stay out of the run's labels; the careless annotator is left out of the resolution
    gold_ids = set(run.read("gold_labels")["pair_id"].to_list())
    assert not gold_ids & set(run.read("labels")["pair_id"].to_list())
    resolved = run.read("resolved")
    assert (resolved["preference"] == "chosen").all() and resolved["confidence"].is_not_null().all()

    result = prefab("export", "--run", run.path, "--source", "human")
    assert result.exit_code == 0, result.output
    exported = (run.path / "exports" / "dpo_train.jsonl").read_text() + (
        run.path / "exports" / "dpo_test.jsonl"
    ).read_text()
    assert "Extra question" not in exported
    card = (run.path / "exports" / "README.md").read_text()
    assert "Estimated label accuracy" in card and "one-coin Bayesian model" in card and "(flagged)" in card
    # both annotators answered enough gold pairs: the human accuracy is measured, with an interval, and below 100%
    human = next(line for line in card.splitlines() if line.startswith("- human ("))
    stated = float(re.search(r"\): ([\d.]+)% right, 90% interval", human).group(1))
    assert "measured:" in human and "assumed" not in human and 50 < stated < 100, human
    # the report puts each annotator's stated accuracy beside the one their gold answers measure
    result = prefab("report", "--run", run.path)
    assert result.exit_code == 0, result.output
    html = (run.path / "report.html").read_text()
    assert (
        'alt="annotator accuracy stated vs measured"' in html and f"{stated / 100:.1%}</strong> right as stated" in html
    )
