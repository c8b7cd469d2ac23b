"""Pair building: which two candidates of a prompt become a chosen/rejected pair.

Strategies (scores are the mean judge `overall` of a candidate; unscored candidates never take part):
- best_vs_worst: the top-scored candidate against the lowest-scored one;
- best_vs_random: the top one against a random strictly lower-rated one (as the binarized UltraFeedback sets);
- all_above_margin: every two candidates whose scores differ by at least `min_margin`.

Rules for all: ties are dropped (chosen must score strictly higher), `min_chosen_score` for chosen,
`max_similarity` (cosine of the two candidates' vectors, needs the embed stage) between chosen and
rejected, never the same candidate nor the same text on both sides. Deterministic given `seed`: the random
choice for a prompt depends only on the seed and the prompt id, not on the other prompts.

Verified pairs (with a `verify:` section, pipeline/stages/verify.py): a prompt with a correct and an incorrect candidate
is paired correct (chosen) against incorrect (rejected) by the same strategy, the judge's score only ordering each side
(best_vs_worst: the best-scored correct one against the worst-scored incorrect one; all_above_margin: every correct
one against every incorrect one). They get strategy "verified"; the judge's thresholds (min_margin,
min_chosen_score, max_similarity) do not apply, since the judge does not decide them. Their scores and margin are the
judge's where it scored both, else null. `verify.mode` says whether other prompts are paired by the judge (prefer,
off) or not at all (only); with `off` no verified pair is made. A prompt with verified pairs gets no judge pair, so a
judge pair whose two answers are both wrong comes only from a prompt without a correct one: the route stage drops it.
"""

import numpy as np
import polars as pl

from pipeline.core.config import Config, PairConfig
from pipeline.core.errors import RunError
from pipeline.core.progress import summary
from pipeline.core.queries import active_prompts, candidate_scores
from pipeline.core.schema import TABLES
from pipeline.core.stage import Stage
from pipeline.core.stats import series_mean
from pipeline.core.store import Run, content_id, pair_id
from pipeline.stages.embed import embed_model

EPS = 1e-9
VERIFIED = "verified"  # the strategy of a pair decided by the verifier


def is_verified() -> pl.Expr:
    """Pairs the verifier decided (a hand-made table may leave strategy null: not verified)."""
    return pl.col("strategy").fill_null("") == VERIFIED


def wrong_statuses(reject_unparseable: bool = True) -> tuple[str, ...]:
    """Verifier statuses that count as a wrong answer; an error (the verifier could not decide) never does."""
    return ("incorrect", "unparseable") if reject_unparseable else ("incorrect",)


def _same_text(a: str, b: str) -> bool:
    return " ".join(a.split()) == " ".join(b.split())


def _rng(seed: int, prompt_id: str) -> np.random.Generator:
    return np.random.default_rng(int(content_id("pair-rng", seed, prompt_id), 16))


def pairs_for_prompt(prompt_id: str, cands: list[dict], cfg, similarity=None) -> list[dict]:
    """Pairs of one prompt. cands: [{candidate_id, text, score}] with non-null scores.

    similarity(a_id, b_id) -> cosine or None.
    """
    # best first; equal scores in a fixed order (candidate id) so the result does not depend on row order
    cands = sorted(cands, key=lambda c: (-c["score"], c["candidate_id"]))
    if len(cands) < 2:
        return []

    def eligible(chosen, rejected) -> tuple[bool, float | None]:
        if chosen["candidate_id"] == rejected["candidate_id"] or _same_text(chosen["text"], rejected["text"]):
            return False, None
        margin = chosen["score"] - rejected["score"]
        if margin <= EPS or margin + EPS < cfg.min_margin:
            return False, None
        sim = similarity(chosen["candidate_id"], rejected["candidate_id"]) if similarity else None
        if cfg.max_similarity is not None and sim is not None and sim > cfg.max_similarity:
            return False, sim
        return True, sim

    def make(chosen, rejected, sim) -> dict:
        return {
            "pair_id": pair_id(chosen["candidate_id"], rejected["candidate_id"]),
            "prompt_id": prompt_id,
            "chosen_id": chosen["candidate_id"],
            "rejected_id": rejected["candidate_id"],
            "chosen_score": chosen["score"],
            "rejected_score": rejected["score"],
            "margin": chosen["score"] - rejected["score"],
            "similarity": sim,
            "strategy": cfg.strategy,
            "route": None,
            "route_reason": None,
        }

    def chosen_ok(c) -> bool:
        return cfg.min_chosen_score is None or c["score"] + EPS >= cfg.min_chosen_score

    if cfg.strategy == "all_above_margin":
        out, seen = [], set()
        for i, chosen in enumerate(cands):
            if not chosen_ok(chosen):
                break  # sorted: no later candidate qualifies either
            for rejected in cands[i + 1 :]:
                ok, sim = eligible(chosen, rejected)
                if ok:
                    pair = make(chosen, rejected, sim)
                    if pair["pair_id"] not in seen:
                        seen.add(pair["pair_id"])
                        out.append(pair)
        return out

    best = cands[0]
    if not chosen_ok(best):
        return []
    if cfg.strategy == "best_vs_worst":
        for rejected in reversed(cands[1:]):  # the worst that passes the rules
            ok, sim = eligible(best, rejected)
            if ok:
                return [make(best, rejected, sim)]
        return []
    if cfg.strategy == "best_vs_random":
        options = [(r, sim) for r in cands[1:] for ok, sim in [eligible(best, r)] if ok]
        if not options:
            return []
        rejected, sim = options[int(_rng(cfg.seed, prompt_id).integers(len(options)))]
        return [make(best, rejected, sim)]
    raise ValueError(f"unknown pair strategy {cfg.strategy!r}")


def verified_pairs_for_prompt(
    prompt_id: str, cands: list[dict], cfg, reject_unparseable: bool = True, similarity=None
) -> list[dict]:
    """Correct against incorrect pairs of one prompt. cands: [{candidate_id, text, status, score}], score the judge's
    (None when unscored), status from the verifications table."""
    wrong = wrong_statuses(reject_unparseable)
    best_first = lambda c: (c["score"] is None, -(c["score"] or 0.0), c["candidate_id"])  # noqa: E731
    worst_first = lambda c: (c["score"] is None, c["score"] or 0.0, c["candidate_id"])  # noqa: E731
    correct = sorted((c for c in cands if c["status"] == "correct"), key=best_first)
    rejected = sorted((c for c in cands if c["status"] in wrong), key=worst_first)

    def make(chosen, rejected) -> dict:
        both = chosen["score"] is not None and rejected["score"] is not None
        return {
            "pair_id": pair_id(chosen["candidate_id"], rejected["candidate_id"]),
            "prompt_id": prompt_id,
            "chosen_id": chosen["candidate_id"],
            "rejected_id": rejected["candidate_id"],
            "chosen_score": chosen["score"],
            "rejected_score": rejected["score"],
            "margin": chosen["score"] - rejected["score"] if both else None,
            "similarity": similarity(chosen["candidate_id"], rejected["candidate_id"]) if similarity else None,
            "strategy": VERIFIED,
            "route": None,
            "route_reason": None,
        }

    options = [(c, r) for c in correct for r in rejected if not _same_text(c["text"], r["text"])]
    if not options:
        return []
    if cfg.strategy == "all_above_margin":
        return [make(c, r) for c, r in options]
    best = options[0][0]
    mine = [r for c, r in options if c is best]
    if cfg.strategy == "best_vs_random":
        return [make(best, mine[int(_rng(cfg.seed, prompt_id).integers(len(mine)))])]
    return [make(best, mine[0])]


def build_pairs(
    candidates: pl.DataFrame,
    scores: pl.DataFrame,
    cfg,
    vectors: dict[str, np.ndarray] | None = None,
    prompt_ids: list[str] | None = None,
    verifications: pl.DataFrame | None = None,
    verify=None,
) -> pl.DataFrame:
    """The pairs table (route columns empty) from candidates, their scores (candidate_id, score) and,
    optionally, candidate vectors (for similarity). prompt_ids limits and orders the prompts. With verifications
    and a verify config whose mode is not off, verified pairs first (see the module docstring)."""
    joined = (
        candidates.filter(pl.col("text").is_not_null())
        .join(scores.select("candidate_id", "score"), on="candidate_id", how="inner")
        .filter(pl.col("score").is_not_null() & pl.col("score").is_not_nan())
    )

    def similarity(a: str, b: str) -> float | None:
        if not vectors or a not in vectors or b not in vectors:
            return None
        return float(np.dot(vectors[a], vectors[b]))

    groups: dict[str, list[dict]] = {}
    for row in joined.select("prompt_id", "candidate_id", "text", "score").iter_rows(named=True):
        groups.setdefault(row["prompt_id"], []).append(row)
    checked: dict[str, list[dict]] = {}
    if verify is not None and verify.mode != "off" and verifications is not None:
        verdicts = (
            candidates.filter(pl.col("text").is_not_null())
            .join(verifications.select("candidate_id", "status"), on="candidate_id", how="inner")
            .join(
                scores.select("candidate_id", "score").with_columns(pl.col("score").fill_nan(None)),
                on="candidate_id",
                how="left",
            )
        )
        for row in verdicts.select("prompt_id", "candidate_id", "text", "status", "score").iter_rows(named=True):
            checked.setdefault(row["prompt_id"], []).append(row)
    judged = verify is None or verify.mode != "only"
    order = prompt_ids if prompt_ids is not None else list(dict.fromkeys([*checked, *groups]))
    rows = []
    for p in order:
        verified = (
            verified_pairs_for_prompt(p, checked[p], cfg, verify.reject_unparseable, similarity) if p in checked else []
        )
        rows += verified or (pairs_for_prompt(p, groups[p], cfg, similarity) if judged and p in groups else [])
    return pl.DataFrame(rows, schema=TABLES["pairs"], orient="row") if rows else pl.DataFrame(schema=TABLES["pairs"])


def candidate_vectors(run, model: str | None = None) -> dict[str, np.ndarray]:
    """candidate_id -> vector from the embeddings table (empty when the embed stage has not run)."""
    emb = run.read_or_empty("embeddings").filter(pl.col("kind") == "candidate")
    if model is not None:
        emb = emb.filter(pl.col("model") == model)
    if emb.is_empty():
        return {}
    matrix = np.asarray(emb["vector"].to_list(), dtype=np.float32)
    return dict(zip(emb["id"].to_list(), matrix, strict=True))


def step(config: Config, run: Run, **_) -> dict:
    cfg = config.require("pair")
    candidates = run.read("candidates")
    verify = config.verify
    verifications = None
    if verify is not None and verify.mode != "off":
        if not run.has("verifications"):
            raise RunError(
                "the config has a verify: section, but the run has no verifications",
                hint=f"run `prefab verify --run {run.path}` first, or set `verify: {{mode: off}}`",
            )
        verifications = run.read("verifications")
    # the judge's scores: needed unless only verified pairs are made
    judgments = (
        run.read_or_empty("judgments")
        if verify is not None and (verify.mode == "only" or config.judge is None)
        else run.read("judgments")
    )
    vectors = candidate_vectors(run, embed_model(config))
    if cfg.max_similarity is not None and not vectors:
        raise RunError(
            "pair.max_similarity needs candidate vectors, but the run has no embeddings",
            hint=f"run `prefab embed --run {run.path}` first (or add an embed: section), or drop max_similarity",
        )
    prompt_ids = active_prompts(run.read("prompts"))["prompt_id"].to_list()
    scores = candidate_scores(judgments)
    pairs = build_pairs(candidates, scores, cfg, vectors, prompt_ids, verifications, verify)
    run.write("pairs", pairs)
    with_scores = scores.filter(pl.col("score").is_not_null())
    counts: dict[str, int | float] = {
        "pairs": pairs.height,
        "prompts_with_pair": pairs["prompt_id"].n_unique() if pairs.height else 0,
        "prompts": len(prompt_ids),
        "scored_candidates": with_scores.height,
    }
    if verifications is not None:
        counts["verified_pairs"] = int((pairs["strategy"] == VERIFIED).sum())
    if pairs["margin"].drop_nulls().len():
        counts["mean_margin"] = round(series_mean(pairs["margin"]), 4)
    if pairs["similarity"].drop_nulls().len():
        counts["mean_similarity"] = round(series_mean(pairs["similarity"]), 4)
    summary("pair", counts)
    return counts


STAGE = Stage(name="pair", order=60, step=step, section="pair", settings=PairConfig)
