"""Dedup and topic clusters: exact and semantic duplicates (real embedding model), nearest-neighbour search on
both index kinds, k-means topics, cluster-balanced sampling. Nothing disappears: rows are marked, not dropped."""

import numpy as np
import polars as pl
import pytest
from quality_runs import make_run

from pipeline.core.config import DedupConfig
from pipeline.core.errors import ConfigError
from pipeline.core.queries import active_prompts
from pipeline.stages import dedup
from pipeline.stages.dedup import balanced_quota, dedup_prompts, exact_duplicates, near_duplicates, sample_clusters
from pipeline.stages.embed import embed_texts, prompt_text

PYTHON = [
    "How do I reverse a list in Python?",
    "How do I sort a dictionary by value in Python?",
    "What does the yield keyword do in Python?",
    "How do I read a CSV file with Python's csv module?",
]
COOKING = [
    "How long should I boil an egg for a runny yolk?",
    "What can I use instead of buttermilk when baking pancakes?",
    "How do I keep pasta from sticking together while cooking?",
    "What is the best way to caramelize onions?",
]
SPACE = [
    "Why does the Moon always show the same face to Earth?",
    "How far away is the nearest star to the Sun?",
    "What is a black hole's event horizon?",
    "Why is Mars red?",
]


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_exact_duplicates_fold_case_and_whitespace():
    assert exact_duplicates(["Hello  world", "hello world", "other", "HELLO WORLD "]) == [None, 0, None, 0]


@pytest.mark.parametrize("n", [300, dedup.FLAT_MAX + 3000])  # exact flat index, then the inverted-file index
def test_near_duplicates_found_and_point_to_an_earlier_kept_row(n):
    rng = np.random.default_rng(1)
    x = unit(rng.standard_normal((n, 384)))
    src = rng.choice(n, 40, replace=False)
    copies = unit(x[src] + 0.01 * rng.standard_normal((40, 384)))  # cosine ~0.98
    parent = near_duplicates(np.concatenate([x, copies]), threshold=0.95)
    assert (parent[n:] == src).all()  # every planted copy points to its original (earlier, kept)
    assert (parent[:n] == -1).all()  # random directions are far apart: no false duplicates
    # a group of three near-identical rows: both later ones point to the first, none to a removed row
    g = unit(np.repeat(x[:1], 3, axis=0) + 0.005 * rng.standard_normal((3, 384)))
    parent = near_duplicates(np.concatenate([g, x[1:50]]), threshold=0.95)
    assert parent[:3].tolist() == [-1, 0, 0]


def test_semantic_duplicates_and_clusters_with_the_real_model(tmp_path):
    texts = (
        PYTHON
        + COOKING
        + SPACE
        + ["how do i reverse a list in python?", "How can I reverse a Python list?", "Why is Mars red in color?"]
    )
    run, config = make_run(tmp_path / "run", texts, dedup={"threshold": 0.9, "clusters": 3})
    counts = dedup.step(config, run)
    out = run.read("prompts")
    assert out.height == len(texts)  # nothing dropped
    by_text = {prompt_text(m): row for m, row in zip(out["messages"].to_list(), out.iter_rows(named=True), strict=True)}
    first = by_text[PYTHON[0]]["prompt_id"]
    assert by_text["how do i reverse a list in python?"]["duplicate_of"] == first
    assert by_text["how do i reverse a list in python?"]["excluded_reason"] == "duplicate"
    assert by_text["How can I reverse a Python list?"]["duplicate_of"] == first
    assert by_text["How can I reverse a Python list?"]["excluded_reason"] == "near_duplicate"
    assert by_text["Why is Mars red in color?"]["duplicate_of"] == by_text["Why is Mars red?"]["prompt_id"]
    assert counts["active"] == 12 and active_prompts(out).height == 12
    # three topics, three clusters: each topic falls in one cluster
    topics = [{by_text[t]["cluster"] for t in topic} for topic in (PYTHON, COOKING, SPACE)]
    assert all(len(t) == 1 for t in topics) and len(set.union(*topics)) == 3
    # copies get the topic of their original
    assert by_text["How can I reverse a Python list?"]["cluster"] == by_text[PYTHON[0]]["cluster"]


def test_rerun_is_idempotent_and_follows_a_new_threshold(tmp_path):
    texts = PYTHON + ["How can I reverse a Python list?"]
    run, config = make_run(tmp_path / "run", texts, dedup={"threshold": 0.9, "clusters": 2})
    dedup.step(config, run)
    first = run.read("prompts")
    dedup.step(config, run)
    assert run.read("prompts").equals(first)
    strict = config.model_copy(update={"dedup": DedupConfig(threshold=0.999, clusters=2)})
    dedup.step(strict, run)
    assert active_prompts(run.read("prompts")).height == 5  # the paraphrase is back


def test_cluster_balanced_sampling_marks_rows_instead_of_dropping():
    clusters = [0] * 10 + [1] * 3 + [2] * 5
    capped = sample_clusters(clusters, max_per_cluster=4, target_size=None, seed=0)
    kept = [c for c, r in zip(clusters, capped, strict=True) if r is None]
    assert sorted(kept) == [0] * 4 + [1] * 3 + [2] * 4
    assert capped.count("max_per_cluster") == 7
    target = sample_clusters(clusters, max_per_cluster=None, target_size=9, seed=0)
    kept = [c for c, r in zip(clusters, target, strict=True) if r is None]
    assert len(kept) == 9 and kept.count(1) == 3 and kept.count(0) == 3 and kept.count(2) == 3
    assert sample_clusters(clusters, 4, None, seed=0) == capped  # seeded
    assert sample_clusters(clusters, 4, None, seed=1) != capped
    assert balanced_quota({0: 100, 1: 2}, 50) == {0: 48, 1: 2}


def test_target_size_through_the_stage_keeps_every_topic(tmp_path):
    texts = PYTHON + COOKING + SPACE
    run, config = make_run(tmp_path / "run", texts, dedup={"clusters": 3, "target_size": 6})
    counts = dedup.step(config, run)
    out = run.read("prompts")
    assert counts["active"] == 6 and counts["excluded_as_target_size"] == 6
    assert active_prompts(out)["cluster"].value_counts()["count"].to_list() == [2, 2, 2]
    assert out.filter(pl.col("excluded_reason") == "target_size")["duplicate_of"].null_count() == 6  # not copies


def test_prompts_of_a_kept_source_are_never_sampled_out_and_count_towards_the_target(tmp_path):
    texts = PYTHON + COOKING + SPACE
    run, config = make_run(
        tmp_path / "run",
        texts,
        dedup={"clusters": 3, "target_size": 6, "keep_sources": [str(tmp_path / "space.jsonl")]},
    )
    run.write(
        "prompts",
        run.read("prompts").with_columns(
            source=pl.when(pl.col("messages").list.first().struct.field("content").is_in(SPACE))
            .then(pl.lit(str(tmp_path / "space.jsonl")))
            .otherwise(pl.lit(str(tmp_path / "other.jsonl")))
        ),
    )
    counts = dedup.step(config, run)
    active = active_prompts(run.read("prompts"))
    assert counts["active"] == 6 and (active["source"] == str(tmp_path / "space.jsonl")).sum() == len(SPACE)
    config.dedup.keep_sources = ["nowhere.jsonl"]
    with pytest.raises(ConfigError, match="keep_sources names .*nowhere.jsonl"):
        dedup.step(config, run)


def test_disabled_semantic_keeps_paraphrases_and_vectors_come_from_the_cache(tmp_path, monkeypatch):
    texts = PYTHON + ["How can I reverse a Python list?"]
    run, config = make_run(tmp_path / "run", texts, dedup={"semantic": False, "clusters": 2})
    dedup.step(config, run)
    assert active_prompts(run.read("prompts")).height == 5
    embed_texts([prompt_text(m) for m in run.read("prompts")["messages"].to_list()], cache_dir=run.path)  # all cached
    from pipeline.stages import embed

    monkeypatch.setattr(embed, "load_model", lambda *a, **k: pytest.fail("vectors should come from the run's cache"))
    dedup.step(config, run)


def test_dedup_prompts_without_vectors_does_exact_only():
    from quality_runs import prompts_frame

    frame = prompts_frame(["a question", "A  Question", "another"])
    out = dedup_prompts(frame, None, DedupConfig(clusters=None))
    assert out["excluded_reason"].to_list() == [None, "duplicate", None]
