"""Calibrate: every configured judge on human-labeled gold pairs, so a run can say how good its labels are.

Each gold pair is judged as a run's pairs are: the pointwise rubric scores both responses, the pairwise judge
sees them in both orders (A/B balanced by construction, each order recorded). From that, per judge and per gold
source: accuracy (ties as half, and without ties) with a 95% Wilson interval, position consistency, position
bias (how often A wins), length bias (accuracy when people preferred the shorter response vs the longer), tie
rate and failures. With logprobs, `pairwise_prob` is the verdict that compares the chosen response's
probability across the two orders, which cancels a constant preference for a position.

Routing labels a pair automatically with the side the judges' scores pick, so the same decision is made on
gold and scored against the human answer. Each routing signal gives a confidence in that decision:
- margin:   the mean pointwise margin, as 0.5 + margin / (2 x the scale's span);
- pairwise: the probability that side wins, averaged over judges and both orders (verdicts count 1/0.5/0);
- ensemble: the share of all judge opinions (each margin's sign, each order's verdict) that agree with it.
The accuracy-coverage curve of each signal (accuracy of the gold pairs at or above a threshold) is what
`route.target_accuracy` picks its threshold from. Every call goes through the run's call cache.
"""

import math
from collections.abc import Callable

import numpy as np
import polars as pl
from numpy.typing import ArrayLike

from pipeline.core.cache import run_cache
from pipeline.core.config import CalibrateConfig, Config, JudgeConfig, RewardModelSpec
from pipeline.core.progress import summary
from pipeline.core.schema import TABLES
from pipeline.core.stage import Stage
from pipeline.core.stats import wilson
from pipeline.core.store import Run
from pipeline.models.llm import check_spec, ticker
from pipeline.stages.gold import read_gold
from pipeline.stages.judge import judge_pairs, score_candidates

SIGNALS = ("margin", "pairwise", "ensemble")
VALUE = {"chosen": 1.0, "tie": 0.5, "rejected": 0.0}
CURVE_POINTS = 40


# ---------------------------------------------------------------- statistics


def accuracy_stats(values: list[float]) -> dict:
    """Accuracy of 1/0.5/0 outcomes with ties as half and without ties, and the tie rate."""
    n = len(values)
    decided = [v for v in values if v != 0.5]
    low, high = wilson(sum(values), n)
    return {
        "n": n,
        "accuracy": round(sum(values) / n, 4) if n else None,
        "accuracy_low": low,
        "accuracy_high": high,
        "accuracy_no_ties": round(sum(decided) / len(decided), 4) if decided else None,
        "n_no_ties": len(decided),
        "tie_rate": round(1 - len(decided) / n, 4) if n else None,
    }


def coverage_curve(confidence: list[float], correct: list[float], points: int = CURVE_POINTS) -> list[dict]:
    """Accuracy (with its interval) of the pairs whose confidence is at or above each threshold, most confident
    first."""
    if not confidence:
        return []
    order = np.argsort(-np.asarray(confidence), kind="stable")
    conf = np.asarray(confidence)[order]
    hits = np.cumsum(np.asarray(correct)[order])
    ends = [
        i for i in range(len(conf)) if i == len(conf) - 1 or conf[i + 1] < conf[i]
    ]  # all pairs with the same confidence
    if len(ends) > points:
        ends = sorted({ends[round(k * (len(ends) - 1) / (points - 1))] for k in range(points)})
    curve = []
    for i in ends:
        n = i + 1
        low, high = wilson(float(hits[i]), n)
        curve.append(
            {
                "threshold": round(float(conf[i]), 6),
                "coverage": round(n / len(conf), 4),
                "n": n,
                "accuracy": round(float(hits[i]) / n, 4),
                "low": low,
                "high": high,
            }
        )
    return curve


def pick_threshold(curve: list[dict], target: float) -> dict | None:
    """The curve point with the largest coverage whose accuracy's lower bound reaches the target; None when none
    does."""
    ok = [p for p in curve if p["low"] is not None and p["low"] >= target]
    return max(ok, key=lambda p: p["coverage"]) if ok else None


def calibrator(confidence: ArrayLike, correct: ArrayLike) -> Callable[[ArrayLike], np.ndarray]:
    """confidence -> estimated probability the automatic label is right (isotonic regression on gold)."""
    from sklearn.isotonic import IsotonicRegression  # start-up: sklearn

    model = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    model.fit(np.asarray(confidence, dtype=float), np.asarray(correct, dtype=float))
    return lambda values: np.round(model.predict(np.asarray(values, dtype=float)), 6)


def outward(low: float, high: float, n: int) -> tuple[float, float]:
    """An interval for the share of n items that is right, widened to shares n items can have (k / n, in [0, 1])."""
    return max(0.0, float(np.floor(low * n + 1e-9)) / n), min(1.0, float(np.ceil(high * n - 1e-9)) / n)


def calibrated_draws(confidence, correct, values, draws: int, seed: int = 0) -> np.ndarray:
    """(draws, len(values)): the calibrator refitted on resamples of the gold pairs, applied to values; how much the
    calibrated probabilities could move with another sample of gold pairs of the same size."""
    rng = np.random.default_rng(seed)
    conf, hits = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=float)
    out = np.empty((draws, len(values)))
    for k in range(draws):
        idx = rng.integers(0, len(conf), len(conf))
        out[k] = calibrator(conf[idx], hits[idx])(values)
    return out


# ---------------------------------------------------------------- the judges' decision and its confidence


def order_values(row: dict) -> list[float]:
    """P(chosen wins) in each order that has a verdict: the logprob share where known, else 1 / 0.5 / 0."""
    out = []
    for order in ("ab", "ba"):
        p, verdict = row.get(f"p_chosen_{order}"), row.get(f"verdict_{order}")
        if p is not None and not (isinstance(p, float) and math.isnan(p)):
            out.append(float(p))
        elif verdict is not None:
            out.append(VALUE[verdict])
    return out


def support(margins: list[float | None], verdicts: list[dict], span: float | None) -> dict[str, float | None]:
    """How strongly the judges back the pair's first response ("chosen") over the second, by each signal (0..1)."""
    scored = [m for m in margins if m is not None]
    orders = [v for row in verdicts for v in order_values(row)]
    votes = [1.0 if m > 0 else 0.0 if m < 0 else 0.5 for m in scored] + orders
    margin = None
    if scored and span is None:  # reward models: Bradley-Terry, P(first preferred) = sigmoid(reward margin)
        margin = float(1 / (1 + np.exp(-np.mean(scored))))
    elif scored and span is not None and span > 0:
        margin = min(1.0, max(0.0, 0.5 + float(np.mean(scored)) / (2 * span)))
    return {
        "margin": margin,
        "pairwise": float(np.mean(orders)) if orders else None,
        "ensemble": float(np.mean([1.0 if v > 0.5 else 0.0 if v < 0.5 else 0.5 for v in votes]))
        if len(votes) >= 2
        else None,
    }


def decide(
    margins: list[float | None], verdicts: list[dict], span: float | None
) -> dict[str, tuple[float, float] | None]:
    """For a gold pair given as (gold chosen, gold rejected): per signal, (confidence, correct) of the automatic label.

    The label is the side the mean pointwise margin picks (as the pair stage orients pairs), or the pairwise
    verdict when no judge scored both; a margin of exactly 0 is a tie, right half the time.
    """
    s = support(margins, verdicts, span)
    scored = [m for m in margins if m is not None]
    lean = float(np.mean(scored)) if scored else (s["pairwise"] - 0.5 if s["pairwise"] is not None else None)
    out: dict[str, tuple[float, float] | None] = {}
    for name in SIGNALS:
        value = s[name]
        if value is None or lean is None:
            out[name] = None
        elif lean == 0:
            out[name] = (0.5, 0.5)
        else:
            out[name] = (value, 1.0) if lean > 0 else (1 - value, 0.0)
    return out


def score_span(judge_cfg) -> float | None:
    """Span of the overall score: the weighted mean of the aspects' own spans; None for reward models, whose
    rewards have no span (a margin is read as Bradley-Terry odds instead)."""
    if judge_cfg.reward_models:
        return None
    aspects = judge_cfg.aspects
    total = sum(a.weight for a in aspects)
    return sum(a.weight * (a.max - a.min) for a in aspects) / total if total else 1.0


# ---------------------------------------------------------------- running the judges on gold


def gold_calls(n_gold: int, judge_cfg) -> int:
    """Calls calibrate makes on n_gold pairs (before parse retries): both responses scored (one call per aspect with
    `scoring: logprobs`), and both orders judged pairwise."""
    point = sum(
        1 if isinstance(s, RewardModelSpec) or judge_cfg.scoring == "json" else len(judge_cfg.aspects)
        for s in judge_cfg.scorers
    )
    return 2 * n_gold * (point + (len(judge_cfg.judges) if judge_cfg.pairwise else 0))


def judge_gold(gold: pl.DataFrame, judge_cfg, cache, tick=None) -> pl.DataFrame:
    """`gold_judgments`: every scorer's pointwise scores of both responses (LLM judges' rubric, or reward models)
    and every LLM judge's pairwise verdicts in both orders. `tick` (pipeline.models.llm.ticker) counts the calls."""
    chats = [[{"role": m["role"], "content": m["content"]} for m in msgs] for msgs in gold["messages"].to_list()]
    chosen, rejected = gold["chosen"].to_list(), gold["rejected"].to_list()
    pointwise = {spec.label: spec for spec in judge_cfg.scorers}
    pairwise = {spec.label: spec for spec in judge_cfg.judges} if judge_cfg.pairwise else {}
    for spec in pairwise.values() if judge_cfg.reward_models else pointwise.values():
        check_spec(spec)
    frames = []
    for label in dict.fromkeys([*pointwise, *pairwise]):
        points = (
            score_candidates(
                pointwise[label],
                [x for c, a, b in zip(chats, chosen, rejected, strict=True) for x in ((c, a), (c, b))],
                judge_cfg,
                cache,
                tick,
            )
            if label in pointwise
            else [{"overall": None, "error": None}] * (2 * gold.height)
        )
        pairs = (
            judge_pairs(pairwise[label], list(zip(chats, chosen, rejected, strict=True)), cache, judge_cfg, tick)
            if label in pairwise
            else [{}] * gold.height
        )
        rows = []
        for k, gold_id in enumerate(gold["gold_id"].to_list()):
            a, b, p = points[2 * k], points[2 * k + 1], pairs[k]
            errors = [f"pointwise: {x['error']}" for x in (a, b) if x["error"]] + (
                [f"pairwise: {p['error']}"] if p.get("error") else []
            )
            rows.append(
                {
                    "gold_id": gold_id,
                    "judge": label,
                    "chosen_score": a["overall"],
                    "rejected_score": b["overall"],
                    "verdict_ab": p.get("verdict_ab"),
                    "verdict_ba": p.get("verdict_ba"),
                    "p_chosen_ab": p.get("p_chosen_ab"),
                    "p_chosen_ba": p.get("p_chosen_ba"),
                    "error": "; ".join(errors) or None,
                }
            )
        frames.append(pl.DataFrame(rows, schema=TABLES["gold_judgments"]))
    return pl.concat(frames)


def gold_signals(gold: pl.DataFrame, judgments: pl.DataFrame, span: float | None) -> pl.DataFrame:
    """`gold_signals`: per gold pair and routing signal, the confidence and correctness of the automatic label."""
    by_gold: dict[str, list[dict]] = {}
    for row in judgments.iter_rows(named=True):
        by_gold.setdefault(row["gold_id"], []).append(row)
    rows = []
    for gold_id, source in gold.select("gold_id", "source").iter_rows():
        judged = by_gold.get(gold_id, [])
        margins = [
            r["chosen_score"] - r["rejected_score"]
            for r in judged
            if r["chosen_score"] is not None and r["rejected_score"] is not None
        ]
        verdicts = [r for r in judged if r["verdict_ab"] is not None or r["verdict_ba"] is not None]
        for name, result in decide(margins, verdicts, span).items():
            if result is not None:
                rows.append(
                    {
                        "gold_id": gold_id,
                        "source": source,
                        "signal": name,
                        "confidence": round(result[0], 6),
                        "correct": result[1],
                    }
                )
    return pl.DataFrame(rows, schema=TABLES["gold_signals"])


def _row(judge: str, method: str, source: str, values: list[float], failures: int, **extra) -> dict:
    return {
        "judge": judge,
        "method": method,
        "signal": None,
        "source": source,
        "failures": failures,
        "consistency": None,
        "position_a": None,
        "accuracy_chosen_shorter": None,
        "accuracy_chosen_longer": None,
        "curve": [],
        **accuracy_stats(values),
        **extra,
    }


def _length_bias(values: list[float], shorter: list[bool]) -> dict:
    short = [v for v, s in zip(values, shorter, strict=True) if s]
    long = [v for v, s in zip(values, shorter, strict=True) if not s]
    return {
        "accuracy_chosen_shorter": round(float(np.mean(short)), 4) if short else None,
        "accuracy_chosen_longer": round(float(np.mean(long)), 4) if long else None,
    }


def judge_rows(gold: pl.DataFrame, judgments: pl.DataFrame, source: str) -> list[dict]:
    """Calibration rows of each judge's pointwise, pairwise and pairwise_prob decisions (and their ensemble)."""
    shorter = dict(
        zip(
            gold["gold_id"].to_list(),
            (gold["chosen"].str.len_chars() < gold["rejected"].str.len_chars()).to_list(),
            strict=True,
        )
    )
    ids = set(gold["gold_id"].to_list())
    rows = []
    ensemble: dict[str, list[float]] = {}
    for (judge,), group in judgments.filter(pl.col("gold_id").is_in(list(ids))).group_by("judge", maintain_order=True):
        records = list(group.iter_rows(named=True))
        point = [
            (
                r["gold_id"],
                VALUE["chosen"]
                if r["chosen_score"] > r["rejected_score"]
                else VALUE["rejected"]
                if r["chosen_score"] < r["rejected_score"]
                else 0.5,
            )
            for r in records
            if r["chosen_score"] is not None and r["rejected_score"] is not None
        ]
        values = [v for _, v in point]
        if point or any(
            r["error"] and "pointwise" in r["error"] for r in records
        ):  # a pairwise-only judge has no pointwise row
            rows.append(
                _row(
                    judge,
                    "pointwise",
                    source,
                    values,
                    len(records) - len(point),
                    **_length_bias(values, [shorter[g] for g, _ in point]),
                )
            )
        for g, v in point:
            ensemble.setdefault(g, []).append(v)
        both = [r for r in records if r["verdict_ab"] is not None and r["verdict_ba"] is not None]
        if not any(r["verdict_ab"] is not None or r["verdict_ba"] is not None for r in records) and not any(
            r["error"] and "pairwise" in r["error"] for r in records
        ):
            continue  # pairwise judging is off
        values = [(VALUE[r["verdict_ab"]] + VALUE[r["verdict_ba"]]) / 2 for r in both]
        named_a = [v == "chosen" for r in both for v in (r["verdict_ab"],) if v != "tie"] + [
            v == "rejected" for r in both for v in (r["verdict_ba"],) if v != "tie"
        ]
        trials = [VALUE[r[k]] for r in both for k in ("verdict_ab", "verdict_ba")]  # ties and no-ties count per verdict
        decided = [t for t in trials if t != 0.5]
        rows.append(
            _row(
                judge,
                "pairwise",
                source,
                values,
                len(records) - len(both),
                tie_rate=round(1 - len(decided) / len(trials), 4) if trials else None,
                n_no_ties=len(decided),
                accuracy_no_ties=round(float(np.mean(decided)), 4) if decided else None,
                consistency=round(float(np.mean([r["verdict_ab"] == r["verdict_ba"] for r in both])), 4)
                if both
                else None,
                position_a=round(float(np.mean(named_a)), 4) if named_a else None,
                **_length_bias(values, [shorter[r["gold_id"]] for r in both]),
            )
        )
        for r, v in zip(both, values, strict=True):
            ensemble.setdefault(r["gold_id"], []).append(1.0 if v > 0.5 else 0.0 if v < 0.5 else 0.5)
        probs = [
            (r["gold_id"], (r["p_chosen_ab"] + r["p_chosen_ba"]) / 2)
            for r in both
            if r["p_chosen_ab"] is not None and r["p_chosen_ba"] is not None
        ]
        if probs:
            values = [1.0 if p > 0.5 else 0.0 if p < 0.5 else 0.5 for _, p in probs]
            rows.append(
                _row(
                    judge,
                    "pairwise_prob",
                    source,
                    values,
                    len(records) - len(probs),
                    **_length_bias(values, [shorter[g] for g, _ in probs]),
                )
            )
    if judgments["judge"].n_unique() > 1 and ensemble:
        values = []
        for votes in ensemble.values():
            m = float(np.mean(votes))
            values.append(1.0 if m > 0.5 else 0.0 if m < 0.5 else 0.5)
        rows.append(_row("ensemble", "ensemble", source, values, len(ids) - len(ensemble)))
    return rows


def signal_rows(signals: pl.DataFrame, source: str, n_gold: int) -> list[dict]:
    rows = []
    for name in SIGNALS:
        part = signals.filter(pl.col("signal") == name)
        if part.is_empty():
            continue
        conf, correct = part["confidence"].to_list(), part["correct"].to_list()
        rows.append(
            _row(
                "routing",
                "signal",
                source,
                correct,
                n_gold - part.height,
                signal=name,
                curve=coverage_curve(conf, correct),
            )
        )
    return rows


def calibration_table(gold: pl.DataFrame, judgments: pl.DataFrame, signals: pl.DataFrame) -> pl.DataFrame:
    """Per judge (and routing signal) and per gold source, plus "all" pooling the sources."""
    groups = (
        [("all", gold)]
        if gold["source"].n_unique() == 1
        else [("all", gold)]
        + [(s, gold.filter(pl.col("source") == s)) for s in sorted(gold["source"].unique().to_list())]
    )
    rows = []
    for source, part in groups:
        rows += judge_rows(part, judgments, source)
        rows += signal_rows(signals.filter(pl.col("gold_id").is_in(part["gold_id"].to_list())), source, part.height)
    return pl.DataFrame(rows, schema=TABLES["calibration"])


def calibrate(gold: pl.DataFrame, judge_cfg, cache) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(gold_judgments, gold_signals, calibration) for the gold pairs; one progress display over every judge's calls."""
    labels = ", ".join(
        dict.fromkeys(s.label for s in [*judge_cfg.scorers, *(judge_cfg.judges if judge_cfg.pairwise else [])])
    )
    with ticker(f"calibrate {labels}", gold_calls(gold.height, judge_cfg)) as tick:
        judgments = judge_gold(gold, judge_cfg, cache, tick)
    signals = gold_signals(gold, judgments, score_span(judge_cfg))
    return judgments, signals, calibration_table(gold, judgments, signals)


def headline(calibration: pl.DataFrame) -> dict:
    """The numbers a summary shows: each judge's accuracy on all gold, with interval, consistency and position bias."""
    out = {}
    for r in calibration.filter((pl.col("source") == "all") & (pl.col("method") != "signal")).iter_rows(named=True):
        key = f"{r['judge']} {r['method']}"
        if r["accuracy"] is not None:
            out[f"{key} accuracy"] = (
                f"{r['accuracy']:.3f} [{r['accuracy_low']:.2f}, {r['accuracy_high']:.2f}] (n={r['n']})"
            )
        if r["consistency"] is not None:
            out[f"{key} consistency"] = r["consistency"]
        if r["position_a"] is not None:
            out[f"{key} picks A"] = r["position_a"]
    return out


def step(config: Config, run: Run, **_) -> dict:
    settings: CalibrateConfig = config.require(
        "calibrate",
        hint="no gold pairs to calibrate on: add a `calibrate: {gold: [FILE.jsonl]}` section or pass --gold FILE",
    )
    judge_cfg = config.judge or JudgeConfig()
    gold = read_gold(settings, resolve=config.resolve)
    cache = run_cache(run.path)
    try:
        judgments, signals, table = calibrate(gold, judge_cfg, cache)
    finally:
        cache.close()
    run.write("gold", gold)
    run.write("gold_judgments", judgments)
    run.write("gold_signals", signals)
    run.write("calibration", table)
    counts = {
        "gold_pairs": gold.height,
        "sources": gold["source"].n_unique(),
        "judges": len(judge_cfg.judges),
        "reward_models": len(judge_cfg.reward_models),
        "failures": judgments.filter(pl.col("error").is_not_null()).height,
    }
    summary("calibrate", counts | headline(table))
    return counts


STAGE = Stage(name="calibrate", order=70, step=step, section="calibrate", settings=CalibrateConfig)
