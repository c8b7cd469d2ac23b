"""Calibration on gold and routing to a target accuracy, with a judge whose accuracy, confidence and position
bias the test sets (tests/gold_judge.py, served over real HTTP to the real openai client)."""

import json

import polars as pl
import pytest
from gold_judge import ControlledJudge, gold_pairs, judge_section, write_jsonl
from quality_runs import make_run

from pipeline.core.runner import run_step
from pipeline.stages.calibrate import coverage_curve, pick_threshold


def calibrated_run(tmp_path, server, pairs, *, pairwise=False, route=None, run_pairs=None):
    gold = write_jsonl(tmp_path / "gold.jsonl", pairs)
    answers = {p["prompt"]: [p["chosen"], p["rejected"]] for p in run_pairs or []}
    run, config = make_run(
        tmp_path / "run",
        list(answers) or ["unused prompt"],
        answers or None,
        judge=judge_section(server, pairwise),
        calibrate={"gold": [str(gold)]},
        pair={"strategy": "best_vs_worst"},
        route=route or {"audit_share": 0},
    )
    run_step("calibrate", config, run)
    return run, config


def all_row(run, method):
    return run.read("calibration").filter((pl.col("source") == "all") & (pl.col("method") == method)).row(0, named=True)


@pytest.mark.parametrize("accuracy", [0.65, 0.9])
def test_calibration_recovers_the_judges_set_accuracy(tmp_path, openai_server, accuracy):
    pairs = gold_pairs(300)
    judge = ControlledJudge(pairs, accuracy=accuracy, informative=False)
    openai_server.respond = judge
    run, _ = calibrated_run(tmp_path, openai_server, pairs)
    row = all_row(run, "pointwise")
    assert row["n"] == 300 and row["failures"] == 0
    assert row["accuracy_low"] <= accuracy <= row["accuracy_high"], row
    truth = sum(judge.right(p["prompt"]) for p in pairs) / 300
    assert row["accuracy"] == pytest.approx(truth, abs=1e-4)  # what the judge did, exactly
    # both halves of the length split, each what the judge did on its pairs (shorter: by characters), and the gold
    # table is kept for push
    for half, shorter in (("accuracy_chosen_shorter", True), ("accuracy_chosen_longer", False)):
        rights = [judge.right(p["prompt"]) for p in pairs if (len(p["chosen"]) < len(p["rejected"])) == shorter]
        assert 0 < len(rights) < 300 and row[half] == pytest.approx(sum(rights) / len(rights), abs=1e-4), (
            half,
            row[half],
        )
    assert run.read("gold").height == 300


def test_a_position_biased_judge_shows_as_such(tmp_path, openai_server):
    pairs = gold_pairs(120)
    openai_server.respond = ControlledJudge(pairs, accuracy=0.9, bias=1.0)
    run, _ = calibrated_run(tmp_path, openai_server, pairs, pairwise=True)
    row = all_row(run, "pairwise")
    assert row["position_a"] == 1.0 and row["consistency"] == 0.0
    assert row["accuracy"] == 0.5 and row["tie_rate"] == 0.0

    fair = tmp_path / "fair"
    fair.mkdir()
    openai_server.respond = ControlledJudge(pairs, accuracy=0.9, bias=0.0, seed=1)
    run, _ = calibrated_run(fair, openai_server, pairs, pairwise=True)
    row = all_row(run, "pairwise")
    assert row["consistency"] == 1.0
    assert 0.4 < row["position_a"] < 0.6
    assert row["accuracy_low"] <= 0.9 <= row["accuracy_high"]


def test_every_gold_call_goes_through_the_call_cache(tmp_path, openai_server):
    pairs = gold_pairs(40)
    openai_server.respond = ControlledJudge(pairs, accuracy=0.8)
    run, config = calibrated_run(tmp_path, openai_server, pairs, pairwise=True)
    asked = openai_server.total
    assert asked == 40 * 2 + 40 * 2  # both responses scored, both orders judged
    run_step("calibrate", config, run)
    assert openai_server.total == asked


def test_routing_to_a_target_meets_it_on_held_out_gold(tmp_path, openai_server):
    pairs = gold_pairs(700)
    calibration, held_out = pairs[:350], pairs[350:]
    judge = ControlledJudge(pairs, accuracy=0.75, informative=True)
    openai_server.respond = judge
    run, config = calibrated_run(
        tmp_path, openai_server, calibration, route={"target_accuracy": 0.85, "audit_share": 0}, run_pairs=held_out
    )
    for stage in ("judge", "pair", "route"):
        run_step(stage, config, run)
    routed = run.read("pairs")
    info = run.stage_info("route")["routing"]
    assert info["target_reached_on_gold"] and info["signal"] == "margin"
    text = dict(zip(run.read("candidates")["candidate_id"], run.read("candidates")["text"], strict=True))
    better = {p["chosen"] for p in held_out}
    auto = routed.filter(pl.col("route") == "auto")
    measured = sum(text[c] in better for c in auto["chosen_id"]) / auto.height
    everything = sum(text[c] in better for c in routed["chosen_id"]) / routed.height
    assert measured >= 0.85, (measured, auto.height)
    assert everything < 0.85  # the judge alone would have missed the target
    assert 0.1 < auto.height / routed.height < 0.9
    assert info["human_share"] == pytest.approx(1 - auto.height / routed.height, abs=1e-3)
    # the auto pairs are the confident ones, the predicted accuracy says roughly what was measured
    assert auto["confidence"].min() >= routed.filter(pl.col("route") == "human")["confidence"].max() - 1e-9
    assert info["auto_low"] <= measured + 0.05 and info["auto_high"] >= measured - 0.05
    assert set(routed.filter(pl.col("route") == "human")["route_reason"].to_list()) == {"below_target"}


def test_uninformative_confidence_cannot_reach_a_high_target(tmp_path, openai_server):
    pairs = gold_pairs(300)
    openai_server.respond = ControlledJudge(pairs, accuracy=0.75, informative=False)
    run, config = calibrated_run(
        tmp_path,
        openai_server,
        pairs[:200],
        route={"target_accuracy": 0.9, "audit_share": 0, "human_budget": 30},
        run_pairs=pairs[200:],
    )
    for stage in ("judge", "pair", "route"):
        run_step(stage, config, run)
    info = run.stage_info("route")["routing"]
    routed = run.read("pairs")
    assert info["target_reached_on_gold"] is False and info["threshold"] is None
    assert (routed["route"] == "human").sum() == 30  # the budget holds; the rest are auto and say why
    assert routed.filter(pl.col("route") == "auto")["route_reason"].str.starts_with("over_budget:below_target").all()
    least_sure = routed.sort("confidence").head(30)
    assert (least_sure["route"] == "human").all() or routed.filter(pl.col("route") == "human")[
        "confidence"
    ].max() <= routed.filter(pl.col("route") == "auto")["confidence"].min() + 1e-9


def test_without_gold_routing_says_accuracy_is_unknown(tmp_path, openai_server):
    pairs = gold_pairs(20)
    openai_server.respond = ControlledJudge(pairs, accuracy=0.8)
    answers = {p["prompt"]: [p["chosen"], p["rejected"]] for p in pairs}
    run, config = make_run(
        tmp_path / "run",
        list(answers),
        answers,
        judge=judge_section(openai_server),
        pair={},
        route={"target_accuracy": 0.9, "margin_threshold": 1.0, "audit_share": 0},
    )
    for stage in ("judge", "pair", "route"):
        run_step(stage, config, run)
    info = run.stage_info("route")["routing"]
    assert info["accuracy"].startswith("unknown")
    assert run.read("pairs")["confidence"].is_null().all()
    assert set(run.read("pairs")["route"].to_list()) <= {"auto", "human"}


def test_threshold_uses_the_lower_bound_not_the_point_estimate():
    # the five most confident pairs are all right: accuracy 1.0, but five pairs cannot show 0.9 at 95%
    curve = coverage_curve([0.99, 0.98, 0.97, 0.96, 0.95] + [0.5] * 95, [1] * 5 + [0.6] * 95)
    assert curve[0]["accuracy"] == 1.0 and curve[0]["low"] < 0.9
    assert pick_threshold(curve, 0.9) is None
    curve = coverage_curve([0.9] * 200 + [0.4] * 100, [1] * 196 + [0] * 4 + [0] * 100)
    assert pick_threshold(curve, 0.9)["threshold"] == 0.9


def test_calibrate_command_and_bad_gold(tmp_path, openai_server, prefab):
    pairs = gold_pairs(10)
    openai_server.respond = ControlledJudge(pairs, accuracy=0.8, seed=3)
    run, config = make_run(tmp_path / "run", ["q"], judge=judge_section(openai_server, pairwise=True))
    run.update_manifest(config=config.model_dump(mode="json"))
    gold = write_jsonl(
        tmp_path / "g.jsonl",
        [
            {
                "prompt": [{"role": "user", "content": p["prompt"]}],
                "chosen": [{"role": "assistant", "content": p["chosen"]}],
                "rejected": p["rejected"],
                "source": "mine",
            }
            for p in pairs
        ],
    )
    result = prefab("calibrate", "--run", run.path, "--gold", gold)
    assert result.exit_code == 0, result.output
    assert "ctl pointwise accuracy" in result.output
    table = run.read("calibration")
    assert set(table["source"]) == {"all"} and set(table["method"]) >= {"pointwise", "pairwise", "signal"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(pairs[0]) + "\n" + json.dumps({"prompt": "q", "chosen": "x"}) + "\n")
    result = prefab("calibrate", "--run", run.path, "--gold", bad)
    assert result.exit_code == 2 and "bad.jsonl:2" in result.output and "rejected" in result.output


def test_report_shows_the_calibration(tmp_path, openai_server):
    from pipeline.stages.report import render

    pairs = gold_pairs(200)
    openai_server.respond = ControlledJudge(pairs, accuracy=0.75)
    run, config = calibrated_run(
        tmp_path,
        openai_server,
        pairs[:120],
        pairwise=True,
        route={"target_accuracy": 0.8, "audit_share": 0},
        run_pairs=pairs[120:],
    )
    for stage in ("judge", "pair", "route"):
        run_step(stage, config, run)
    page = render(run)
    assert 'id="calibration"' in page and "accuracy-coverage" in page and "predicted right" in page
    assert "this section failed" not in page
