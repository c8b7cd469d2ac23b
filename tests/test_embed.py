"""Embeddings with the real embedded all-MiniLM-L6-v2: vectors, the (text, model) cache, the embed stage's scores."""

import numpy as np
import polars as pl
import pytest
from quality_runs import make_run

from pipeline.stages import embed
from pipeline.stages.embed import cluster_stats, embed_texts, near_identical, vendi_score

TEXTS = [
    "How do I reverse a list in Python?",
    "What is the capital of France?",
    "Write a haiku about autumn leaves.",
    "How can I reverse a Python list?",
]


@pytest.fixture(scope="module")
def model():
    return embed.load_model()


def test_vectors_match_sentence_transformers_and_carry_meaning(model, tmp_path):
    vecs = embed_texts(TEXTS, cache_dir=tmp_path)
    direct = model.encode(TEXTS, normalize_embeddings=True)
    assert vecs.shape == (4, 384) and vecs.dtype == np.float32
    np.testing.assert_allclose(vecs, direct, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    sims = vecs @ vecs.T
    assert sims[0, 3] > 0.85  # the paraphrase
    assert sims[0, 3] > sims[0, 1] + 0.4 and sims[0, 3] > sims[0, 2] + 0.4


def test_second_run_reads_the_cache_without_loading_the_model(model, tmp_path, monkeypatch):
    first = embed_texts(TEXTS, cache_dir=tmp_path)
    monkeypatch.setattr(
        embed, "load_model", lambda *a, **k: pytest.fail("cached texts must not load or call the model")
    )
    again = embed_texts(list(reversed(TEXTS)) + [TEXTS[0]], cache_dir=tmp_path)
    np.testing.assert_array_equal(again, np.concatenate([first[::-1], first[:1]]))
    # the cache is keyed by model too: another model name is a miss
    with pytest.raises(pytest.fail.Exception):
        embed_texts(TEXTS, model="some/other-model", cache_dir=tmp_path)


def test_only_new_texts_are_encoded_once_each(model, tmp_path, monkeypatch):
    embed_texts(TEXTS[:2], cache_dir=tmp_path)
    seen = []
    real_encode = model.encode
    monkeypatch.setattr(model, "encode", lambda texts, **kw: seen.extend(texts) or real_encode(texts, **kw))
    out = embed_texts(TEXTS + [TEXTS[2]], cache_dir=tmp_path)
    assert sorted(seen) == sorted(TEXTS[2:])  # the duplicate text is encoded once, cached ones not at all
    np.testing.assert_allclose(out[4], out[2])


def test_vendi_score_is_the_effective_number_of_distinct_items():
    rng = np.random.default_rng(0)
    same = np.tile(np.eye(8, dtype=np.float32)[:1], (50, 1))
    assert vendi_score(same) == pytest.approx(1.0)
    assert vendi_score(np.eye(8, dtype=np.float32)[:5]) == pytest.approx(5.0)
    # equals the definition on the n x n kernel
    x = rng.standard_normal((40, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    eig = np.linalg.eigvalsh((x @ x.T) / len(x))
    eig = eig[eig > 1e-12]
    assert vendi_score(x) == pytest.approx(float(np.exp(-(eig * np.log(eig)).sum())), rel=1e-5)


def test_cluster_stats_entropy_and_coverage():
    assert cluster_stats([0, 0, 1, 1, 2, 2], covered=[0, 1]) == {
        "clusters": 3,
        "cluster_entropy": 1.0,
        "cluster_coverage": 0.6667,
    }
    skewed = cluster_stats([0] * 98 + [1, 2])
    assert skewed["cluster_entropy"] < 0.2


def test_near_identical_only_within_a_prompt():
    v = np.eye(3, dtype=np.float32)[[0, 0, 1, 0]]
    assert near_identical(["p", "p", "p", "q"], v, 0.98) == [None, 0, None, None]


def test_embed_stage_writes_vectors_scores_and_diversity(model, tmp_path):
    answers = {
        TEXTS[0]: [
            "Use my_list.reverse() or my_list[::-1].",
            "Use my_list.reverse()  or my_list[::-1].",
            "Paris is in France.",
        ],
        TEXTS[1]: ["Paris.", None],
    }
    run, config = make_run(tmp_path / "run", TEXTS, answers, embed={})
    counts = embed.step(config, run)
    emb = run.read("embeddings")
    assert emb.filter(pl.col("kind") == "prompt").height == 4
    assert emb.filter(pl.col("kind") == "candidate").height == 4  # the failed candidate has no text, no vector
    assert set(emb["model"]) == {"embedded:all-minilm-l6-v2"} and emb["vector"].list.len().unique().to_list() == [384]
    scores = run.read("candidate_scores").join(run.read("candidates").select("candidate_id", "text"), on="candidate_id")
    rel = dict(zip(scores["text"], scores["relevance"], strict=True))
    assert rel["Use my_list.reverse() or my_list[::-1]."] > rel["Paris is in France."] + 0.2  # relevance to the prompt
    twins = scores.filter(pl.col("near_identical_to").is_not_null())
    assert twins["text"].to_list() == ["Use my_list.reverse()  or my_list[::-1]."]
    assert counts["near_identical"] == 1 and 1.5 < counts["vendi_score"] <= 4


def test_embed_in_parts_writes_what_one_part_writes(model, tmp_path):
    """Parts of one prompt each (the stage's memory bound) give the same tables and counts as one part; the Vendi
    score, summed over parts as X^T X, equals the score of all prompt vectors at once."""
    answers = {
        TEXTS[0]: [
            "Use my_list.reverse() or my_list[::-1].",
            "Use my_list.reverse()  or my_list[::-1].",
            "Paris is in France.",
        ],
        TEXTS[1]: ["Paris.", None],
        TEXTS[3]: ["Slice it: xs[::-1]."],
    }
    outputs = []
    for size in (1, 1000):
        run, config = make_run(tmp_path / f"run{size}", TEXTS, answers, embed={"part_size": size})
        counts = embed.step(config, run)
        assert not (run.path / ".parts").exists() or not any((run.path / ".parts").iterdir())
        tables = [run.read(t).sort(pl.col(run.read(t).columns[0])) for t in ("embeddings", "candidate_scores")]
        outputs.append((counts, tables))
    (one_counts, one_tables), (all_counts, all_tables) = outputs
    assert one_counts == all_counts
    # encoded in other batches, a vector may differ in its last bits: ids and flags equal, numbers within 1e-6
    for a, b, numbers in zip(one_tables, all_tables, ("vector", "relevance"), strict=True):
        assert a.drop(numbers).equals(b.drop(numbers))
    assert np.allclose(
        np.array(one_tables[0]["vector"].to_list()), np.array(all_tables[0]["vector"].to_list()), atol=1e-6
    )
    assert np.allclose(one_tables[1]["relevance"].to_numpy(), all_tables[1]["relevance"].to_numpy(), atol=1e-6)
    prompt_vectors = np.array(all_tables[0].filter(pl.col("kind") == "prompt")["vector"].to_list())
    assert all_counts["vendi_score"] == round(vendi_score(prompt_vectors), 3)
