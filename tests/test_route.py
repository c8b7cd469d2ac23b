"""Routing: auto vs human with reasons, the human budget, the audit share, and the route stage end to end with a
pairwise judge on the local OpenAI-compatible server (one that always prefers the first position included)."""

import json

import polars as pl
import pytest
from quality_runs import judgments_frame, make_run

from pipeline.core.config import RouteConfig
from pipeline.core.schema import TABLES
from pipeline.stages import pair, route
from pipeline.stages.route import audit_pick, route_pairs


def pairs_table(rows: list[dict]) -> pl.DataFrame:
    base = {
        "prompt_id": "p",
        "chosen_score": 5.0,
        "rejected_score": 1.0,
        "similarity": None,
        "strategy": "best_vs_worst",
        "route": None,
        "route_reason": None,
    }
    return pl.DataFrame([{**base, **r} for r in rows], schema=TABLES["pairs"])


def verdicts(rows: list[tuple]) -> pl.DataFrame:
    """(pair_id, judge, ab, ba, confidence)"""
    return pl.DataFrame(
        [
            {
                "pair_id": p,
                "judge": j,
                "verdict_ab": ab,
                "verdict_ba": ba,
                "consistent": (ab == ba) if ab and ba else None,
                "confidence": conf,
                "raw": "",
                "error": None,
            }
            for p, j, ab, ba, conf in rows
        ],
        schema=TABLES["pair_judgments"],
    )


def test_each_reason():
    pairs = pairs_table(
        [
            {"pair_id": "ok", "chosen_id": "c1", "rejected_id": "r1", "margin": 3.0},
            {"pair_id": "close", "chosen_id": "c2", "rejected_id": "r2", "margin": 0.5},
            {"pair_id": "flip", "chosen_id": "c3", "rejected_id": "r3", "margin": 3.0},
            {"pair_id": "against", "chosen_id": "c4", "rejected_id": "r4", "margin": 3.0},
            {"pair_id": "failed", "chosen_id": "c5", "rejected_id": "r5", "margin": 3.0},
            {"pair_id": "score_failed", "chosen_id": "c6", "rejected_id": "r6", "margin": 3.0},
        ]
    )
    pj = verdicts(
        [
            ("ok", "j", "chosen", "chosen", 1.0),
            ("close", "j", "chosen", "chosen", 1.0),
            ("flip", "j", "chosen", "rejected", 0.0),
            ("against", "j", "rejected", "rejected", 1.0),
            ("failed", "j", None, "chosen", None),
            ("score_failed", "j", "chosen", "chosen", 1.0),
        ]
    )
    scores = {f"c{i}": 5.0 for i in range(1, 7)} | {f"r{i}": 2.0 for i in range(1, 7)} | {"r6": None}
    out, _ = route_pairs(pairs, pj, judgments_frame(scores), RouteConfig(margin_threshold=1.0, audit_share=0))
    got = dict(zip(out["pair_id"], zip(out["route"], out["route_reason"], strict=True), strict=True))
    assert got == {
        "ok": ("auto", "confident"),
        "close": ("human", "low_margin"),
        "flip": ("human", "inconsistent"),
        "against": ("human", "judges_disagree"),
        "failed": ("human", "judge_failed"),
        "score_failed": ("human", "judge_failed"),
    }


def test_ensemble_disagreement_and_several_reasons_at_once():
    pairs = pairs_table(
        [
            {"pair_id": "a", "chosen_id": "c", "rejected_id": "r", "margin": 0.5},
            {"pair_id": "b", "chosen_id": "c2", "rejected_id": "r2", "margin": 2.0},
        ]
    )
    judgments = pl.concat(
        [
            judgments_frame({"c": 4.0, "r": 2.0, "c2": 5.0, "r2": 2.0}, "j1"),
            judgments_frame({"c": 2.0, "r": 3.0, "c2": 4.0, "r2": 3.0}, "j2"),
        ]
    )
    pj = verdicts(
        [
            ("a", "j1", "chosen", "chosen", 1.0),
            ("a", "j2", "tie", "tie", 1.0),
            ("b", "j1", "chosen", "chosen", 1.0),
            ("b", "j2", "chosen", "chosen", 1.0),
        ]
    )
    out, _ = route_pairs(pairs, pj, judgments, RouteConfig(audit_share=0))
    assert out["route_reason"].to_list() == ["judges_disagree,low_margin", "confident"]


def test_without_pairwise_judgments_only_scores_decide():
    pairs = pairs_table(
        [
            {"pair_id": "a", "chosen_id": "c", "rejected_id": "r", "margin": 2.0},
            {"pair_id": "b", "chosen_id": "c", "rejected_id": "r2", "margin": 0.2},
        ]
    )
    out, _ = route_pairs(
        pairs, no_verdicts(), judgments_frame({"c": 3.0, "r": 1.0, "r2": 2.8}), RouteConfig(audit_share=0)
    )
    assert out["route"].to_list() == ["auto", "human"]


def no_verdicts():
    return pl.DataFrame(schema=TABLES["pair_judgments"])


def test_audit_share_is_stable_and_about_the_share():
    ids = [f"pair-{i}" for i in range(4000)]
    picked = [audit_pick(p, 0, 0.1) for p in ids]
    assert 0.08 < sum(picked) / len(ids) < 0.12
    assert picked == [audit_pick(p, 0, 0.1) for p in ids]  # the same pairs every time
    assert picked != [audit_pick(p, 1, 0.1) for p in ids]  # another seed, another sample
    pairs = pairs_table([{"pair_id": p, "chosen_id": "c", "rejected_id": "r", "margin": 3.0} for p in ids[:500]])
    out, _ = route_pairs(pairs, no_verdicts(), judgments_frame({"c": 5.0, "r": 2.0}), RouteConfig(audit_share=0.1))
    audited = out.filter(pl.col("route_reason") == "audit")
    assert audited["route"].unique().to_list() == ["human"] and audited.height == sum(picked[:500])


def test_human_budget_keeps_the_most_uncertain():
    pairs = pairs_table(
        [
            {"pair_id": "low1", "chosen_id": "c", "rejected_id": "r", "margin": 0.9},
            {"pair_id": "low2", "chosen_id": "c", "rejected_id": "r", "margin": 0.1},
            {"pair_id": "flip", "chosen_id": "c", "rejected_id": "r", "margin": 3.0},
            {"pair_id": "fail", "chosen_id": "c", "rejected_id": "r", "margin": 3.0},
            {"pair_id": "sure", "chosen_id": "c", "rejected_id": "r", "margin": 3.0},
        ]
    )
    pj = verdicts(
        [
            ("low1", "j", "chosen", "chosen", 1.0),
            ("low2", "j", "chosen", "chosen", 1.0),
            ("flip", "j", "chosen", "rejected", 0.0),
            ("fail", "j", None, None, None),
            ("sure", "j", "chosen", "chosen", 1.0),
        ]
    )
    out, _ = route_pairs(pairs, pj, judgments_frame({"c": 5.0, "r": 2.0}), RouteConfig(human_budget=3, audit_share=0))
    got = dict(zip(out["pair_id"], zip(out["route"], out["route_reason"], strict=True), strict=True))
    assert got == {
        "fail": ("human", "judge_failed"),
        "flip": ("human", "inconsistent"),
        "low2": ("human", "low_margin"),
        "low1": ("auto", "over_budget:low_margin"),
        "sure": ("auto", "confident"),
    }
    assert (out["route"] == "human").sum() == 3


def checked(statuses: dict[str, str]) -> pl.DataFrame:
    """verifications rows: candidate_id -> status."""
    return pl.DataFrame(
        [
            {
                "candidate_id": c,
                "prompt_id": "p",
                "verifier": "math",
                "status": s,
                "answer": None,
                "reference": "6",
                "error": None,
                "score": None,
                "check_key": c,
            }
            for c, s in statuses.items()
        ],
        schema=TABLES["verifications"],
    )


def test_a_pair_of_two_wrong_answers_is_dropped_and_spends_no_budget():
    pairs = pairs_table(
        [
            {"pair_id": "wrong", "chosen_id": "w1", "rejected_id": "w2", "margin": 0.1},
            {"pair_id": "no_final", "chosen_id": "w1", "rejected_id": "u", "margin": 0.1},
            {
                "pair_id": "undecided",
                "chosen_id": "w2",
                "rejected_id": "e",
                "margin": 0.5,
            },  # the verifier could not check e
            {"pair_id": "unchecked", "chosen_id": "c", "rejected_id": "r", "margin": 0.4},  # no reference answer
        ]
    )
    verifications = checked({"w1": "incorrect", "w2": "incorrect", "u": "unparseable", "e": "error"})
    scores = judgments_frame({"w1": 3.0, "w2": 2.9, "u": 2.9, "e": 2.5, "c": 3.0, "r": 2.6})
    out, info = route_pairs(
        pairs, no_verdicts(), scores, RouteConfig(human_budget=2, audit_share=0), verifications=verifications
    )
    got = dict(zip(out["pair_id"], zip(out["route"], out["route_reason"], strict=True), strict=True))
    # the two dropped pairs are the most uncertain by margin, yet the budget of 2 goes to the pairs people can decide
    assert got == {
        "wrong": ("dropped", "both_incorrect"),
        "no_final": ("dropped", "both_incorrect"),
        "undecided": ("human", "low_margin"),
        "unchecked": ("human", "low_margin"),
    }
    assert out.filter(pl.col("route") == "dropped")["confidence"].null_count() == 2 and info["human_share"] == 0.5
    # an answer with no final answer counts as wrong only as the pair stage counts it (verify.reject_unparseable)
    out, _ = route_pairs(
        pairs, no_verdicts(), scores, RouteConfig(audit_share=0), verifications=verifications, reject_unparseable=False
    )
    assert out["route"].to_list() == ["dropped", "human", "human", "human"]
    # without verifications nothing is dropped
    out, _ = route_pairs(pairs, no_verdicts(), scores, RouteConfig(audit_share=0))
    assert out["route"].to_list() == ["human"] * 4


# ---------------------------------------------------------------- the stage, with a pairwise judge on a real server

PROMPTS = ["Name a prime number.", "What colour is the sky?", "Spell 'cat' backwards."]
ANSWERS = {
    PROMPTS[0]: ["7 is prime.", "Nine."],
    PROMPTS[1]: ["Usually blue.", "Green, always."],
    PROMPTS[2]: ["tac", "cat"],
}
GOOD = {"7 is prime.", "Usually blue.", "tac"}


def scored_run(tmp_path, openai_server, **route_cfg):
    spec = {"name": "pj", "backend": "openai", "model": "judge-model", "base_url": openai_server.url, "max_retries": 0}
    run, config = make_run(
        tmp_path / "run",
        PROMPTS,
        ANSWERS,
        judge={"judges": [spec], "parse_retries": 0},
        pair={},
        route={"audit_share": 0, **route_cfg},
    )
    cands = run.read("candidates")
    run.write(
        "judgments",
        judgments_frame(
            {c: 5.0 if t in GOOD else 1.0 for c, t in zip(cands["candidate_id"], cands["text"], strict=True)}, "pj"
        ),
    )
    pair.step(config, run)
    return run, config


def respond_with(decide):
    def respond(request):
        user = request["messages"][-1]["content"]
        a = user.split("## Response A\n\n", 1)[1].split("\n\n## Response B")[0]
        return json.dumps({"rationale": "r", "winner": decide(a)})

    return respond


def test_a_judge_preferring_the_first_position_sends_every_pair_to_humans(tmp_path, openai_server):
    openai_server.respond = respond_with(lambda first: "A")
    run, config = scored_run(tmp_path, openai_server)
    counts = route.step(config, run)
    pairs = run.read("pairs")
    assert pairs.height == 3
    assert pairs["route"].to_list() == ["human"] * 3 and all("inconsistent" in r for r in pairs["route_reason"])
    pj = run.read("pair_judgments")
    assert pj["consistent"].to_list() == [False] * 3 and pj["verdict_ab"].to_list() == ["chosen"] * 3
    assert counts["human"] == 3 and counts["auto"] == 0 and counts["pairwise_consistency"] == 0.0
    assert openai_server.total == 6


def test_a_consistent_judge_lets_confident_pairs_through(tmp_path, openai_server):
    openai_server.respond = respond_with(lambda first: "A" if first in GOOD else "B")
    run, config = scored_run(tmp_path, openai_server)
    counts = route.step(config, run)
    assert run.read("pairs")["route"].to_list() == ["auto"] * 3
    assert counts["pairwise_consistency"] == 1.0 and counts["pairwise_agrees_with_scores"] == 1.0
    before = openai_server.total
    route.step(config, run)  # re-run: verdicts from the call cache
    assert openai_server.total == before


def test_pairwise_off_routes_on_scores_alone(tmp_path, openai_server):
    run, config = scored_run(tmp_path, openai_server, margin_threshold=5.0)
    config.judge.pairwise = False
    route.step(config, run)
    assert openai_server.total == 0 and not run.has("pair_judgments")
    assert run.read("pairs")["route_reason"].to_list() == ["low_margin"] * 3


@pytest.mark.parametrize("budget", [0, 2])
def test_budget_through_the_stage(tmp_path, openai_server, budget):
    openai_server.respond = respond_with(lambda first: "A")
    run, config = scored_run(tmp_path, openai_server, human_budget=budget)
    counts = route.step(config, run)
    assert counts["human"] == budget and counts["auto"] == 3 - budget
    assert (
        run.read("pairs")
        .filter(pl.col("route") == "auto")["route_reason"]
        .str.starts_with("over_budget:inconsistent")
        .all()
    )
