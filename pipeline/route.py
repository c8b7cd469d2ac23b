"""Routing: is the judge sure enough to use a pair as it is (`auto`), or should a person look (`human`)?

The route stage first runs the pairwise judge(s) on every pair in both orders (when `judge.pairwise`),
writing `pair_judgments`, then gives each pair a route and the reasons, most serious first:

- judge_failed      a pairwise verdict or a judge's score of either candidate is missing (unparseable);
- inconsistent      a pairwise verdict flips when the two responses swap places (position bias);
- judges_disagree   the pairwise verdict is not "chosen" (tie or the other one), the pairwise judges
                    differ, or one judge of an ensemble scores rejected at least as high as chosen;
- low_margin        judge margin below `margin_threshold`;
- audit             a random share (`audit_share`) of the confident ones, seeded by pair id, to check
                    the judge against people.

`route_reason` lists the reasons joined by ","; a confident pair says "confident". With `human_budget`
K, the K most uncertain pairs (reason severity, then pairwise confidence, then margin) stay human; the others
become auto with route_reason "over_budget:<reasons>", so an export can still leave them out.
"""

import polars as pl

from pipeline.progress import summary
from pipeline.store import content_id

REASONS = ("judge_failed", "inconsistent", "judges_disagree", "low_margin", "audit")


def audit_pick(pair_id: str, seed: int, share: float) -> bool:
    """Stable per pair: the same pairs are audited whatever else is in the run."""
    return int(content_id("audit", seed, pair_id), 16) / 16**16 < share


def pair_reasons(pair: dict, pair_rows: list[dict], judge_margins: list[float | None], cfg) -> list[str]:
    reasons = []
    verdicts = pair_rows
    if any(r["verdict_ab"] is None or r["verdict_ba"] is None for r in verdicts) or any(m is None for m in judge_margins):
        reasons.append("judge_failed")
    if any(r["consistent"] is False for r in verdicts):
        reasons.append("inconsistent")
    agreed = [r["verdict_ab"] for r in verdicts if r["consistent"]]
    scored = [m for m in judge_margins if m is not None]
    if any(v != "chosen" for v in agreed) or len(set(agreed)) > 1 or (len(scored) > 1 and any(m <= 0 for m in scored)):
        reasons.append("judges_disagree")
    if pair["margin"] is None or pair["margin"] < cfg.margin_threshold:
        reasons.append("low_margin")
    if not reasons and audit_pick(pair["pair_id"], cfg.seed, cfg.audit_share):
        reasons.append("audit")
    return reasons


def uncertainty_key(reasons: list[str], confidence: float | None, margin: float | None) -> tuple:
    """Sort key, most uncertain first."""
    severity = min((REASONS.index(r) for r in reasons), default=len(REASONS))
    return (severity, confidence if confidence is not None else -1.0, margin if margin is not None else float("-inf"))


def route_pairs(pairs: pl.DataFrame, pair_judgments: pl.DataFrame, judgments: pl.DataFrame, cfg) -> pl.DataFrame:
    """The pairs with route and route_reason filled."""
    by_pair: dict[str, list[dict]] = {}
    for row in pair_judgments.iter_rows(named=True):
        by_pair.setdefault(row["pair_id"], []).append(row)
    judges = judgments["judge"].unique().sort().to_list() if judgments.height else []
    score = {(r["candidate_id"], r["judge"]): r["overall"] for r in judgments.select("candidate_id", "judge", "overall").iter_rows(named=True)}

    decided = []
    for pair in pairs.iter_rows(named=True):
        margins = []
        for j in judges:
            c, r = score.get((pair["chosen_id"], j)), score.get((pair["rejected_id"], j))
            if (pair["chosen_id"], j) in score or (pair["rejected_id"], j) in score:
                margins.append(None if c is None or r is None else c - r)
        rows = by_pair.get(pair["pair_id"], [])
        reasons = pair_reasons(pair, rows, margins, cfg)
        confs = [r["confidence"] for r in rows if r["confidence"] is not None]
        conf = min(confs) if confs else None
        decided.append((pair, reasons, conf))

    human = [i for i, (_, reasons, _) in enumerate(decided) if reasons]
    over: set[int] = set()
    if cfg.human_budget is not None and len(human) > cfg.human_budget:
        ranked = sorted(human, key=lambda i: (*uncertainty_key(decided[i][1], decided[i][2], decided[i][0]["margin"]), decided[i][0]["pair_id"]))
        over = set(ranked[cfg.human_budget:])
    routes, why = [], []
    for i, (pair, reasons, _) in enumerate(decided):
        if not reasons:
            routes.append("auto"), why.append("confident")
        elif i in over:
            routes.append("auto"), why.append("over_budget:" + ",".join(reasons))
        else:
            routes.append("human"), why.append(",".join(reasons))
    return pairs.with_columns(pl.Series("route", routes, dtype=pl.String), pl.Series("route_reason", why, dtype=pl.String))


def pairwise_table(pairs: pl.DataFrame, candidates: pl.DataFrame, prompts: pl.DataFrame, judge_cfg, cache) -> pl.DataFrame:
    """pair_judgments for every pair and pairwise judge."""
    from pipeline.judge import judge_pairs
    from pipeline.schema import TABLES

    text = dict(zip(candidates["candidate_id"].to_list(), candidates["text"].to_list()))
    messages = dict(zip(prompts["prompt_id"].to_list(), prompts["messages"].to_list()))
    items = [([{"role": m["role"], "content": m["content"]} for m in messages[p]], text[c], text[r])
             for p, c, r in pairs.select("prompt_id", "chosen_id", "rejected_id").iter_rows()]
    frames = []
    for spec in judge_cfg.judges:
        rows = judge_pairs(spec, items, cache, judge_cfg)
        frames.append(pl.DataFrame([{"pair_id": p, "judge": spec.label, **r} for p, r in zip(pairs["pair_id"].to_list(), rows)],
                                   schema=TABLES["pair_judgments"]))
    return pl.concat(frames) if frames else pl.DataFrame(schema=TABLES["pair_judgments"])


def pairwise_stats(pair_judgments: pl.DataFrame) -> dict:
    """Position consistency, agreement with the pointwise ranking and between pairwise judges."""
    if pair_judgments.is_empty():
        return {}
    both = pair_judgments.filter(pl.col("consistent").is_not_null())
    out = {"pairwise_failed": pair_judgments.height - both.height}
    if both.height:
        out["pairwise_consistency"] = round(float(both["consistent"].mean()), 4)
        agreed = both.filter(pl.col("consistent"))
        if agreed.height:
            out["pairwise_agrees_with_scores"] = round(float((agreed["verdict_ab"] == "chosen").mean()), 4)
    if pair_judgments["judge"].n_unique() > 1:
        per_pair = both.group_by("pair_id").agg(pl.col("judge").n_unique().alias("n"),
                                                (pl.col("verdict_ab") + "|" + pl.col("verdict_ba")).n_unique().alias("distinct"))
        full = per_pair.filter(pl.col("n") == pair_judgments["judge"].n_unique())
        if full.height:
            out["pairwise_judges_agree"] = round(float((full["distinct"] == 1).mean()), 4)
    return out


def step(config, run, **_) -> dict:
    from pipeline.cache import run_cache
    from pipeline.schema import empty

    cfg = config.route
    pairs = run.read("pairs")
    judgments = run.read_or_empty("judgments")
    pair_judgments = empty("pair_judgments")
    if config.judge is not None and config.judge.pairwise and pairs.height:
        cache = run_cache(run.path)
        try:
            pair_judgments = pairwise_table(pairs, run.read("candidates"), run.read("prompts"), config.judge, cache)
        finally:
            cache.close()
        run.write("pair_judgments", pair_judgments)
    routed = run.write("pairs", route_pairs(pairs, pair_judgments, judgments, cfg))
    counts = {"pairs": routed.height, "auto": int((routed["route"] == "auto").sum()), "human": int((routed["route"] == "human").sum())}
    reasons = routed.select(pl.col("route_reason").str.replace(r"^over_budget:.*", "over_budget").str.split(",")).explode("route_reason")
    counts.update({f"reason_{r}": n for r, n in reasons["route_reason"].value_counts(sort=True).iter_rows() if r})
    counts.update(pairwise_stats(pair_judgments))
    summary("route", counts)
    return counts
