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

`route_reason` lists the reasons joined by ","; a confident pair says "confident". A verified pair (strategy
"verified": a correct final answer against an incorrect one, pipeline/stages/verify.py) is `auto` with reason "verified"
and confidence 1 whatever the judges say: it is not judged pairwise, audited or counted in the budget. A pair whose two
answers the verifier found wrong (both incorrect, or unparseable with `verify.reject_unparseable`) is `dropped` with
reason "both_incorrect": either side as chosen would teach a wrong answer and a person could only say "both bad", so it
is neither judged pairwise, sent to people, counted in the budget nor exported. A side the verifier could not decide
(no reference, an error) leaves the pair to the judge as before. With `human_budget`
K, the K most uncertain pairs (reason severity, then pairwise confidence, then margin) stay human; the others
become auto with route_reason "over_budget:<reasons>", so an export can still leave them out.

With `target_accuracy` and a calibration on gold (the calibrate stage), the rules above give way to one that
means something: a routing signal (pipeline/stages/calibrate.py) gives each pair a confidence in its automatic label,
the threshold is the lowest at which the gold pairs at or above it were right at least `target_accuracy` of
the time (lower bound of the 95% interval), and the pairs below it go to people (reason `below_target`; with a
budget, the least confident first). Every pair gets `confidence`, the calibrated probability that its label
is right, and the stage records the threshold, the predicted accuracy of the auto pairs with an interval, and
the human share. Without gold the accuracy of auto pairs is unknown, and the stage says so.
"""

from typing import Any

import numpy as np
import polars as pl

from pipeline.core.cache import run_cache
from pipeline.core.config import Config, RouteConfig
from pipeline.core.progress import console, summary
from pipeline.core.queries import messages_of
from pipeline.core.schema import TABLES, empty
from pipeline.core.stage import Stage
from pipeline.core.stats import series_mean
from pipeline.core.store import Run, TableParts, content_id
from pipeline.models.llm import part_size, ticker
from pipeline.stages.calibrate import (
    SIGNALS,
    calibrated_draws,
    calibrator,
    coverage_curve,
    outward,
    pick_threshold,
    score_span,
    support,
)
from pipeline.stages.judge import judge_pairs
from pipeline.stages.pair import VERIFIED, is_verified, wrong_statuses

DROPPED = "dropped"  # the route of a pair that is neither labeled automatically nor by people
BOTH_INCORRECT = "both_incorrect"  # its reason: the verifier found both answers wrong
REASONS = ("judge_failed", "inconsistent", "judges_disagree", "low_margin", "below_target", "audit")
BOOTSTRAP = 200  # resamples of the gold pairs for the interval of the auto pairs' predicted accuracy
LEVEL = 0.90  # that interval's


def audit_pick(pair_id: str, seed: int, share: float) -> bool:
    """Stable per pair: the same pairs are audited whatever else is in the run."""
    return int(content_id("audit", seed, pair_id), 16) / 16**16 < share


def both_incorrect(
    pairs: pl.DataFrame, verifications: pl.DataFrame | None, reject_unparseable: bool = True
) -> set[str]:
    """Ids of the pairs whose two answers the verifier found wrong; none without verifications."""
    if verifications is None or verifications.is_empty() or pairs.is_empty():
        return set()
    wrong = verifications.filter(pl.col("status").is_in(wrong_statuses(reject_unparseable)))["candidate_id"].implode()
    return set(pairs.filter(pl.col("chosen_id").is_in(wrong) & pl.col("rejected_id").is_in(wrong))["pair_id"].to_list())


def pair_reasons(pair: dict, pair_rows: list[dict], judge_margins: list[float | None], cfg) -> list[str]:
    reasons = []
    verdicts = pair_rows
    if any(r["verdict_ab"] is None or r["verdict_ba"] is None for r in verdicts) or any(
        m is None for m in judge_margins
    ):
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


def pair_evidence(pairs: pl.DataFrame, pair_judgments: pl.DataFrame, judgments: pl.DataFrame):
    """Per pair: (pair row, each judge's margin chosen - rejected (None where a score is missing), pairwise rows)."""
    by_pair: dict[str, list[dict]] = {}
    for row in pair_judgments.iter_rows(named=True):
        by_pair.setdefault(row["pair_id"], []).append(row)
    judges = judgments["judge"].unique().sort().to_list() if judgments.height else []
    score = {
        (r["candidate_id"], r["judge"]): r["overall"]
        for r in judgments.select("candidate_id", "judge", "overall").iter_rows(named=True)
    }
    for pair in pairs.iter_rows(named=True):
        margins = []
        for j in judges:
            c, r = score.get((pair["chosen_id"], j)), score.get((pair["rejected_id"], j))
            if (pair["chosen_id"], j) in score or (pair["rejected_id"], j) in score:
                margins.append(None if c is None or r is None else c - r)
        yield pair, margins, by_pair.get(pair["pair_id"], [])


def choose_signal(gold_signals: pl.DataFrame, cfg) -> tuple[str | None, dict | None]:
    """(signal, its threshold point on the gold curve for the target, if any); "best" takes the largest coverage,
    or without a target the first signal the gold has."""
    names = (
        [cfg.signal] if cfg.signal != "best" else [s for s in SIGNALS if s in gold_signals["signal"].unique().to_list()]
    )
    best: tuple[str | None, dict | None] = (None, None)
    for name in names:
        part = gold_signals.filter(pl.col("signal") == name)
        if part.is_empty():
            continue
        if cfg.target_accuracy is None:
            return name, None
        point = pick_threshold(
            coverage_curve(part["confidence"].to_list(), part["correct"].to_list()), cfg.target_accuracy
        )
        if best[0] is None or (point and (best[1] is None or point["coverage"] > best[1]["coverage"])):
            best = (name, point)
    return best


def route_pairs(
    pairs: pl.DataFrame,
    pair_judgments: pl.DataFrame,
    judgments: pl.DataFrame,
    cfg,
    gold_signals: pl.DataFrame | None = None,
    span: float | None = 4.0,
    verifications: pl.DataFrame | None = None,
    reject_unparseable: bool = True,
) -> tuple[pl.DataFrame, dict]:
    """The pairs with route, route_reason and confidence filled, and what the routing decided (threshold, predicted
    accuracy). verifications: the verify stage's table, whose verdicts drop the pairs with two wrong answers."""
    hopeless = both_incorrect(pairs, verifications, reject_unparseable)
    gold = gold_signals if gold_signals is not None and not gold_signals.is_empty() else None
    calibrated = gold is not None
    targeted = calibrated and cfg.target_accuracy is not None
    signal, point = choose_signal(gold, cfg) if gold is not None else (None, None)
    decided: list[tuple[dict, list[str], float | None, float | None]] = []  # (pair, reasons, confidence, value)
    for pair, margins, rows in pair_evidence(pairs, pair_judgments, judgments):
        if pair["strategy"] == VERIFIED or pair["pair_id"] in hopeless:
            decided.append((pair, [], 1.0 if pair["strategy"] == VERIFIED else None, None))
            continue
        value = support(margins, rows, span)[signal] if signal else None
        if targeted:
            reasons = ["judge_failed"] if value is None or any(m is None for m in margins) else []
            if not reasons and (point is None or value < point["threshold"]):
                reasons.append("below_target")
            if not reasons and audit_pick(pair["pair_id"], cfg.seed, cfg.audit_share):
                reasons.append("audit")
            conf = value
        else:
            reasons = pair_reasons(pair, rows, margins, cfg)
            confs = [r["confidence"] for r in rows if r["confidence"] is not None]
            conf = min(confs) if confs else None
        decided.append((pair, reasons, conf, value))

    human = [i for i, (_, reasons, _, _) in enumerate(decided) if reasons]
    over: set[int] = set()
    if cfg.human_budget is not None and len(human) > cfg.human_budget:
        ranked = sorted(
            human,
            key=lambda i: (
                *uncertainty_key(decided[i][1], decided[i][2], decided[i][0]["margin"]),
                decided[i][0]["pair_id"],
            ),
        )
        over = set(ranked[cfg.human_budget :])
    routes: list[str] = []
    why: list[str] = []
    for i, (pair, reasons, _, _) in enumerate(decided):
        if pair["strategy"] == VERIFIED:
            routes.append("auto")
            why.append(VERIFIED)
        elif pair["pair_id"] in hopeless:
            routes.append(DROPPED)
            why.append(BOTH_INCORRECT)
        elif not reasons:
            routes.append("auto")
            why.append("confident")
        elif i in over:
            routes.append("auto")
            why.append("over_budget:" + ",".join(reasons))
        else:
            routes.append("human")
            why.append(",".join(reasons))
    values = [d[3] for d in decided]
    confidence = [1.0 if pair["strategy"] == VERIFIED else None for pair, _, _, _ in decided]
    info: dict = {"accuracy": "unknown: no gold calibration (add a calibrate: section with gold pairs)"}
    if gold is not None:
        part = gold.filter(pl.col("signal") == signal)
        estimate = calibrator(part["confidence"].to_list(), part["correct"].to_list())
        known = {i: v for i, v in enumerate(values) if v is not None}  # index -> signal value, where there is one
        for i, p in zip(known, estimate(list(known.values())) if known else [], strict=True):
            confidence[i] = float(p)
        auto = [i for i in known if routes[i] == "auto"]
        info = {
            "signal": signal,
            "accuracy": "estimated on gold",
            **predicted_accuracy(part, [known[i] for i in auto]),
        }
        if targeted:
            info |= {
                "target_accuracy": cfg.target_accuracy,
                "threshold": point["threshold"] if point else None,
                "target_reached_on_gold": point is not None,
            }
            if point:
                info |= {
                    "gold_accuracy_above_threshold": point["accuracy"],
                    "gold_low": point["low"],
                    "gold_high": point["high"],
                    "gold_coverage": point["coverage"],
                }
    routed = pairs.with_columns(
        pl.Series("route", routes, dtype=pl.String),
        pl.Series("route_reason", why, dtype=pl.String),
        pl.Series("confidence", confidence, dtype=pl.Float64),
        pl.Series("signal_value", values if calibrated else [None] * len(values), dtype=pl.Float64),
    )
    info["human_share"] = round(routes.count("human") / len(routes), 4) if routes else None
    return routed, info


def predicted_accuracy(gold: pl.DataFrame, auto_values: list[float], seed: int = 0) -> dict:
    """Mean calibrated probability over the auto pairs, with a 90% interval for the share of them that is right: the
    calibration refitted on resamples of the gold pairs, and each pair's own chance of being right drawn under each."""
    if not auto_values:
        return {"auto_predicted_accuracy": None}
    rng = np.random.default_rng(seed)
    conf, correct = gold["confidence"].to_numpy(), gold["correct"].to_numpy()
    auto_confidence = calibrator(conf, correct)(auto_values)
    draws = calibrated_draws(conf, correct, auto_values, BOOTSTRAP, seed)
    shares = (rng.random(draws.shape) < draws).mean(axis=1)
    # the spread of the refits, centred on the fit: a refit on resampled gold is noisier than the fit on all of it
    low, high = np.percentile(shares - shares.mean(), [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2]) + np.mean(
        auto_confidence
    )
    low, high = outward(low, high, len(auto_values))
    return {
        "auto_predicted_accuracy": round(float(np.mean(auto_confidence)), 4),
        "auto_low": round(float(low), 4),
        "auto_high": round(float(high), 4),
        "auto_level": LEVEL,
    }


def pairwise_table(
    pairs: pl.DataFrame, candidates: pl.LazyFrame, prompts: pl.LazyFrame, judge_cfg, cache, tick=None
) -> pl.DataFrame:
    """pair_judgments for these pairs and every pairwise judge; only these pairs' texts and messages are read."""
    ids = pl.concat([pairs["chosen_id"], pairs["rejected_id"]]).unique().implode()
    text = dict(
        candidates.filter(pl.col("candidate_id").is_in(ids)).select("candidate_id", "text").collect().iter_rows()
    )
    messages = dict(messages_of(prompts, pairs["prompt_id"]).iter_rows())
    items = [
        ([{"role": m["role"], "content": m["content"]} for m in messages[p]], text[c], text[r])
        for p, c, r in pairs.select("prompt_id", "chosen_id", "rejected_id").iter_rows()
    ]
    frames = []
    for spec in judge_cfg.judges:
        rows = judge_pairs(spec, items, cache, judge_cfg, tick)
        frames.append(
            pl.DataFrame(
                [
                    {"pair_id": p, "judge": spec.label, **r}
                    for p, r in zip(pairs["pair_id"].to_list(), rows, strict=True)
                ],
                schema=TABLES["pair_judgments"],
            )
        )
    return pl.concat(frames) if frames else pl.DataFrame(schema=TABLES["pair_judgments"])


def judge_pairs_in_parts(run, pairs: pl.DataFrame, judge_cfg) -> pl.DataFrame:
    """pairwise_table part by part (judge.part_size pairs), each part written as it is done and skipped on restart,
    then the parts as the pair_judgments table."""
    prompts, candidates = run.scan("prompts"), run.scan("candidates")
    per_pair = 2 * len(judge_cfg.judges)
    settings = judge_cfg.model_dump(mode="json")
    parts, keys = TableParts(run, "pair_judgments"), []
    cache = run_cache(run.path)
    try:
        with ticker(f"pairwise {', '.join(j.label for j in judge_cfg.judges)}", per_pair * pairs.height) as tick:
            size = part_size(judge_cfg.part_size, judge_cfg.judges, pairs.height)
            for index, start in enumerate(range(0, pairs.height, size)):
                part = pairs[start : start + size]
                keys.append(
                    content_id("pair_judgments", part.select("pair_id", "chosen_id", "rejected_id").rows(), settings)[
                        :12
                    ]
                )
                if parts.has(index, keys[-1]):
                    tick(per_pair * part.height, cached=True)
                    continue
                parts.write(index, keys[-1], pairwise_table(part, candidates, prompts, judge_cfg, cache, tick))
    finally:
        cache.close()
    parts.assemble(keys)
    return run.read("pair_judgments")


def pairwise_stats(pair_judgments: pl.DataFrame) -> dict:
    """Position consistency, agreement with the pointwise ranking and between pairwise judges."""
    if pair_judgments.is_empty():
        return {}
    both = pair_judgments.filter(pl.col("consistent").is_not_null())
    out: dict[str, int | float] = {"pairwise_failed": pair_judgments.height - both.height}
    if both.height:
        out["pairwise_consistency"] = round(series_mean(both["consistent"]), 4)
        agreed = both.filter(pl.col("consistent"))
        if agreed.height:
            out["pairwise_agrees_with_scores"] = round(series_mean(agreed["verdict_ab"] == "chosen"), 4)
    if pair_judgments["judge"].n_unique() > 1:
        per_pair = both.group_by("pair_id").agg(
            pl.col("judge").n_unique().alias("n"),
            (pl.col("verdict_ab") + "|" + pl.col("verdict_ba")).n_unique().alias("distinct"),
        )
        full = per_pair.filter(pl.col("n") == pair_judgments["judge"].n_unique())
        if full.height:
            out["pairwise_judges_agree"] = round(series_mean(full["distinct"] == 1), 4)
    return out


def step(config: Config, run: Run, **_) -> dict:
    cfg = config.require("route")
    pairs = run.read("pairs")
    judgments = run.read_or_empty("judgments")
    pair_judgments = empty("pair_judgments")
    verify = config.verify  # as the pair stage: with mode off, the verdicts are recorded but decide nothing
    verifications = (
        run.read("verifications") if verify is not None and verify.mode != "off" and run.has("verifications") else None
    )
    reject_unparseable = verify.reject_unparseable if verify is not None else True
    hopeless = both_incorrect(pairs, verifications, reject_unparseable)
    # the verifier decided the others: no judge call for them
    judged = pairs.filter(~is_verified() & ~pl.col("pair_id").is_in(list(hopeless)))
    if config.judge is not None and config.judge.pairwise and judged.height:
        pair_judgments = judge_pairs_in_parts(run, judged, config.judge)
    gold_signals = run.read("gold_signals") if run.has("gold_signals") else None
    if cfg.target_accuracy is not None and gold_signals is None:
        console.print(
            "[yellow]route.target_accuracy is set but the run has no calibration on gold: routing by margin_threshold, "
            "and the accuracy of the auto pairs is unknown. Add a `calibrate: {gold: [FILE]}` section.[/yellow]"
        )
    span = score_span(config.judge) if config.judge is not None else 4.0
    routed, info = route_pairs(
        pairs, pair_judgments, judgments, cfg, gold_signals, span, verifications, reject_unparseable
    )
    routed = run.write("pairs", routed)
    counts: dict[str, Any] = {
        "pairs": routed.height,
        **{r: int((routed["route"] == r).sum()) for r in ("auto", "human", DROPPED)},
    }
    reasons = routed.select(
        pl.col("route_reason").str.replace(r"^over_budget:.*", "over_budget").str.split(",")
    ).explode("route_reason")
    counts.update({f"reason_{r}": n for r, n in reasons["route_reason"].value_counts(sort=True).iter_rows() if r})
    counts.update(pairwise_stats(pair_judgments))
    counts["routing"] = info
    if info.get("target_reached_on_gold") is False:
        console.print(
            f"[yellow]no threshold of the {info['signal']} signal reaches {cfg.target_accuracy:.0%} on gold at the "
            "lower bound of its interval: every pair is routed to people (within the budget)[/yellow]"
        )
    summary("route", {k: v for k, v in counts.items() if k != "routing"} | {f"routing {k}": v for k, v in info.items()})
    return counts


STAGE = Stage(name="route", order=80, step=step, section="route", settings=RouteConfig)
