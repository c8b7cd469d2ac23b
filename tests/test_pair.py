"""Pair building: each strategy, ties, missing scores, identical texts, min chosen score, max similarity, seeds."""

import numpy as np
import polars as pl
import pytest
from quality_runs import candidates_frame, judgments_frame, make_run, prompts_frame

from pipeline.core.config import PairConfig
from pipeline.core.errors import RunError
from pipeline.core.schema import TABLES
from pipeline.core.store import pair_id
from pipeline.stages import pair
from pipeline.stages.pair import build_pairs

Q = "Explain recursion."


def setup(answers: dict[str, list], scores: dict[str, list]):
    """answers/scores: prompt -> texts / scores in the same order."""
    prompts = prompts_frame(list(answers))
    cands = candidates_frame(prompts, answers)
    by_prompt = dict(zip(prompts["prompt_id"], prompts["messages"].list.last().struct.field("content"), strict=True))
    score_of = {}
    for row in cands.iter_rows(named=True):
        score_of[row["candidate_id"]] = scores[by_prompt[row["prompt_id"]]][row["sample_index"]]
    return cands, judgments_frame(score_of), {r["candidate_id"]: r["text"] for r in cands.iter_rows(named=True)}


def scores_of(judgments):
    from pipeline.core.queries import candidate_scores

    return candidate_scores(judgments)


def run_strategy(answers, scores, vectors=None, **cfg):
    cands, judgments, text = setup(answers, scores)
    out = build_pairs(cands, scores_of(judgments), PairConfig(**cfg), vectors)
    return [(text[r["chosen_id"]], text[r["rejected_id"]], r["margin"]) for r in out.iter_rows(named=True)], out


def test_best_vs_worst():
    got, out = run_strategy({Q: ["a", "b", "c", "d"]}, {Q: [3, 5, 1, 4]})
    assert got == [("b", "c", 4)]
    row = out.row(0, named=True)
    assert row["pair_id"] == pair_id(row["chosen_id"], row["rejected_id"]) and row["strategy"] == "best_vs_worst"
    assert (
        row["chosen_score"] == 5 and row["rejected_score"] == 1 and row["route"] is None and row["similarity"] is None
    )


def test_best_vs_random_picks_a_lower_rated_one_deterministically():
    answers, scores = {Q: ["a", "b", "c", "d", "e"]}, {Q: [5, 3, 2, 1, 5]}
    picks = {run_strategy(answers, scores, strategy="best_vs_random", seed=s)[0][0] for s in range(12)}
    assert len({c for c, _, _ in picks}) == 1 and picks <= {
        (c, r, 5 - s) for c in "ae" for r, s in zip("bcd", [3, 2, 1], strict=True)
    }
    assert {r for _, r, _ in picks} == {"b", "c", "d"}  # never the other 5 (a tie); every lower one is reachable
    assert (
        run_strategy(answers, scores, strategy="best_vs_random", seed=3)[0]
        == run_strategy(answers, scores, strategy="best_vs_random", seed=3)[0]
    )


def test_best_vs_random_does_not_depend_on_other_prompts_or_row_order():
    answers = {Q: ["a", "b", "c", "d"], "Other?": ["x", "y"]}
    scores = {Q: [5, 3, 2, 1], "Other?": [1, 2]}
    cands, judgments, _ = setup(answers, scores)
    full = build_pairs(cands, scores_of(judgments), PairConfig(strategy="best_vs_random", seed=7))
    alone = build_pairs(
        cands.filter(pl.col("prompt_id") == full["prompt_id"][0]).reverse(),
        scores_of(judgments),
        PairConfig(strategy="best_vs_random", seed=7),
    )
    assert alone.row(0) == full.row(0)


def test_all_above_margin():
    got, _ = run_strategy({Q: ["a", "b", "c", "d"]}, {Q: [5, 4, 2.5, 1]}, strategy="all_above_margin", min_margin=1.5)
    assert sorted(got) == [("a", "c", 2.5), ("a", "d", 4), ("b", "c", 1.5), ("b", "d", 3), ("c", "d", 1.5)]


def test_all_equal_scores_make_no_pair():
    for strategy in ("best_vs_worst", "best_vs_random", "all_above_margin"):
        got, out = run_strategy({Q: ["a", "b", "c"]}, {Q: [3, 3, 3]}, strategy=strategy)
        assert got == [] and out.height == 0 and out.columns == list(TABLES["pairs"])


def test_missing_scores_never_take_part():
    got, _ = run_strategy({Q: ["a", "b", "c", "d"]}, {Q: [None, 4, None, 2]})
    assert got == [("b", "d", 2)]
    got, _ = run_strategy({Q: ["a", "b"]}, {Q: [None, 4]})
    assert got == []
    # a failed generation (no text) is never paired even if something scored it
    got, _ = run_strategy({Q: ["a", None, "c"]}, {Q: [5, 1, 3]})
    assert got == [("a", "c", 2)]


def test_identical_texts_are_never_chosen_and_rejected():
    got, _ = run_strategy({Q: ["same answer", "same  answer", "other"]}, {Q: [5, 1, 3]})
    assert got == [("same answer", "other", 2)]  # the worst is the same text as the best: next worst instead
    got, _ = run_strategy({Q: ["same", "same", "same"]}, {Q: [5, 1, 3]}, strategy="all_above_margin")
    assert got == []
    got, _ = run_strategy({Q: ["x", "x"]}, {Q: [5, 1]}, strategy="best_vs_random")
    assert got == []


def test_min_margin_and_min_chosen_score():
    assert run_strategy({Q: ["a", "b"]}, {Q: [4, 3.5]}, min_margin=1)[0] == []
    assert run_strategy({Q: ["a", "b"]}, {Q: [3, 1]}, min_chosen_score=4)[0] == []
    assert run_strategy({Q: ["a", "b"]}, {Q: [4, 1]}, min_chosen_score=4)[0] == [("a", "b", 3)]
    got, _ = run_strategy({Q: ["a", "b", "c"]}, {Q: [5, 3.9, 1]}, strategy="all_above_margin", min_chosen_score=4)
    assert sorted(got) == [("a", "b", pytest.approx(1.1)), ("a", "c", 4)]


def test_max_similarity_skips_near_identical_rejected():
    cands, judgments, text = setup({Q: ["a", "b", "c"]}, {Q: [5, 3, 1]})
    ids = {t: c for c, t in text.items()}
    v = {
        ids["a"]: np.array([1, 0], np.float32),
        ids["b"]: np.array([0.6, 0.8], np.float32),
        ids["c"]: np.array([0.99, 0.141], np.float32),
    }
    out = build_pairs(cands, scores_of(judgments), PairConfig(max_similarity=0.9), v)
    assert [(text[c], text[r]) for c, r in out.select("chosen_id", "rejected_id").iter_rows()] == [("a", "b")]
    assert out["similarity"].to_list() == [pytest.approx(0.6)]
    out = build_pairs(cands, scores_of(judgments), PairConfig(), v)  # no limit: the worst, its similarity recorded
    assert text[out["rejected_id"][0]] == "c" and out["similarity"][0] == pytest.approx(0.99, abs=1e-3)


def test_stage_uses_active_prompts_and_needs_embeddings_for_max_similarity(tmp_path):
    answers = {Q: ["a", "b"], "Dropped?": ["x", "y"]}
    run, config = make_run(tmp_path / "run", list(answers), answers, pair={"max_similarity": 0.9})
    prompts = run.read("prompts").with_columns(
        pl.when(pl.col("messages").list.last().struct.field("content") == "Dropped?")
        .then(pl.lit("max_per_cluster"))
        .alias("excluded_reason")
    )
    run.write("prompts", prompts)
    cands = run.read("candidates")
    run.write("judgments", judgments_frame(dict(zip(cands["candidate_id"], [5.0, 1.0, 5.0, 1.0], strict=True))))
    with pytest.raises(RunError, match="needs candidate vectors"):
        pair.step(config, run)
    config.pair.max_similarity = None
    counts = pair.step(config, run)
    assert counts["pairs"] == 1 and run.read("pairs")["prompt_id"].to_list() == [prompts["prompt_id"][0]]
