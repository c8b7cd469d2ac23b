"""Final-label quality: four ways to spend the same human budget, side by side, in a SIMULATION (part 1);
optionally, the embedded judge on the shared human-labeled gold pairs (part 2).

Part 1, the simulation. Its parameters were fixed before any comparison was run and are not tuned to the result:
- N = 2,000 run pairs, plus 400 gold pairs (held out from the run pairs) used only for calibration and as the
  gold labels mixed into the annotators' queue; seeds 0..4, the whole simulation repeated per seed; mean and
  min over seeds reported per arm.
- The judge: per pair a confidence c ~ Uniform(0, 1), its belief right with P = 0.55 + 0.40 c (mean 0.75). The
  pair is shown in a random A/B order and with probability 0.10 the judge answers "A" whatever it believes
  (a 10-point position preference, applied to the judge's label before routing; the confidence is unchanged),
  so it is right with P = 0.9 (0.55 + 0.40 c) + 0.05 (mean 0.725). The signal routing sees: s = 0.5 + 0.5 c.
  Pairs are oriented by the judge: its side is "chosen"; the truth is "chosen" where the judge is right.
- Three annotators, right on 90%, 80% and 60% of pairs (when wrong they pick the other side). A human-routed
  pair gets 2 labels from 2 distinct annotators chosen uniformly at random.
- The same total of human labels for every arm: B = 2 x 400 = 800.
- Arms:
  (a) judge only: every pair keeps the judge's label;
  (b) today's margin routing: margin = 4 (s - 0.5) on the 1..5 scale, a pair goes to people when
      margin < margin_threshold = 0.5, in the run's order (first come) until the budget runs out; the two
      labels resolved by `labeling.aggregate.majority` with tie_rule "judge" (a 1-1 split keeps the judge's label);
  (c) random routing: B/2 random pairs to people, the same majority rule;
  (d) calibrated routing with reliability-weighted aggregation: `pipeline.calibrate.coverage_curve`,
      `calibrator` and `pick_threshold` on the 400 gold pairs' (s, judge right 1/0); the run pairs with the
      lowest calibrated P(right) go to people (lowest s first); 10% of the budget's labels go to gold pairs
      (one label each, annotator uniform at random), so 720 labels = 360 run pairs at B = 800; resolved by
      `labeling.aggregate.dawid_skene` (gold labels as `gold_labels`, tie_rule "judge", judge_votes None).
  A routed pair's final label is its resolved preference, the judge's where the status is not "resolved".
  Every arm reads the same pre-drawn labels for a pair (common random numbers), so arms differ only by routing
  and aggregation, and budgets are nested.
- Figures: final-label accuracy over all N run pairs, human labels used; for (b) and (d), the fewest human
  labels (budget swept over 0, 200, ..., 4,000) whose accuracy, averaged over seeds, reaches 0.90.
  (b) is measured at every budget. (d) is measured at 800 and 4,000 and wherever an upper bound allows 0.90:
  the Bayes-optimal accuracy (true annotator accuracies and the judge's true P(right | c) known) of the
  routed pairs plus the judge's realised accuracy on the rest, averaged over seeds; a budget whose bound is
  under 0.89 (0.01 = 3 standard errors of the seed-averaged accuracy) cannot reach 0.90 and is not run
  (each Dawid-Skene fit takes 1-2 s here).
- Two diagnostics, not arms and without targets: (d)'s routing resolved by majority (as (b) and (c)), and by
  Dawid-Skene given no gold labels, to tell the routing's effect from the aggregation's.
- Targets (met or missed, printed; never tuned): (d) at least 5 points above (b) and above (c); (d) reaches
  0.90 with fewer human labels than (b).

Part 2 (optional, slow on CPU): when ../shared/gold/ exists, the demo's embedded judge (SmolLM2-135M,
scoring: logprobs, pairwise, the demo's aspects) through `pipeline.calibrate.calibrate` on a seeded sample of
PREFAB_BENCH_GOLD_LIMIT pairs per file (default 40; 0 skips it): accuracy, consistency and A-share per file and
method, next to "choose the longer response" on the same pairs (measured in the same run) and the reference
figures of ../shared/gold/README.md.

    python -m bench.bench_label_quality          (PREFAB_BENCH_GOLD_LIMIT=0 for the simulation only)
"""

import os
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------- part 1: the simulation's fixed parameters

N_RUN = 2000
N_GOLD = 400
SEEDS = (0, 1, 2, 3, 4)
BELIEF_BASE, BELIEF_SLOPE = 0.55, 0.40  # P(judge's belief right | c) = 0.55 + 0.40 c
POSITION_PREFERENCE = 0.10  # P(judge answers "A" whatever it believes)
ANNOTATORS = ("ann90", "ann80", "ann60")
ANNOTATOR_ACCURACY = np.array([0.90, 0.80, 0.60])
LABELS_PER_PAIR = 2
BUDGET = 2 * 400
GOLD_SHARE = 0.10  # arm (d): share of the budget's labels spent on gold pairs
MARGIN_THRESHOLD = 0.5  # arm (b): margin = 4 (s - 0.5) on a 1..5 scale
TARGET_ACCURACY = 0.90
SWEEP = list(range(0, 4001, 200))
BOUND_SLACK = 0.01
TIE_RULE = "judge"


def judge_p_right(c: np.ndarray) -> np.ndarray:
    """The judge's true P(right | c), position preference included."""
    return (1 - POSITION_PREFERENCE) * (BELIEF_BASE + BELIEF_SLOPE * c) + POSITION_PREFERENCE * 0.5


def draw_judge(rng, n: int):
    """(signal s, judge right) for n pairs shown in a random A/B order."""
    c = rng.uniform(0.0, 1.0, n)
    belief_right = rng.random(n) < BELIEF_BASE + BELIEF_SLOPE * c
    a_is_better = rng.random(n) < 0.5
    says_a = rng.random(n) < POSITION_PREFERENCE
    right = np.where(says_a, a_is_better, belief_right)
    return 0.5 + 0.5 * c, right


def simulate(seed: int) -> dict:
    """Everything random in one seed, drawn once: the judge on run and gold pairs, every pair's two labels, the queues."""
    rng = np.random.default_rng(seed)
    run_s, run_right = draw_judge(rng, N_RUN)
    gold_s, gold_right = draw_judge(rng, N_GOLD)
    first = rng.integers(0, 3, N_RUN)
    ann = np.stack([first, (first + rng.integers(1, 3, N_RUN)) % 3], axis=1)  # 2 distinct, uniform
    label_right = rng.random((N_RUN, LABELS_PER_PAIR)) < ANNOTATOR_ACCURACY[ann]
    gold_ann = rng.integers(0, 3, N_GOLD)  # the k-th gold label goes to gold pair k
    gold_label_right = rng.random(N_GOLD) < ANNOTATOR_ACCURACY[gold_ann]
    return {"seed": seed, "run_s": run_s, "run_right": run_right, "gold_s": gold_s, "gold_right": gold_right, "ann": ann,
            "label_right": label_right, "gold_ann": gold_ann, "gold_label_right": gold_label_right,
            "random_order": rng.permutation(N_RUN)}


def pair_id(i: int) -> str:
    return f"p{i:05d}"


def labels_frame(pair_ids: list[str], annotators: list[str], labels: list[str]):
    """A `labels` table (pipeline.schema) of submitted labels; the other columns null."""
    import polars as pl

    from pipeline.schema import TABLES

    known = {"pair_id": pair_ids, "annotator": annotators, "status": ["submitted"] * len(pair_ids), "label": labels}
    return pl.DataFrame({col: known.get(col, [None] * len(pair_ids)) for col in TABLES["labels"]}, schema=TABLES["labels"])


def run_labels(sim: dict, routed: np.ndarray):
    """The two labels of each routed pair, relative to the judge's side: "chosen" when the annotator agrees with it."""
    ids, who, what = [], [], []
    for i in routed.tolist():
        for j in range(LABELS_PER_PAIR):
            ids.append(pair_id(i))
            who.append(ANNOTATORS[sim["ann"][i, j]])
            # the truth is "chosen" where the judge is right; a right annotator gives the truth
            what.append("chosen" if sim["run_right"][i] == sim["label_right"][i, j] else "rejected")
    return labels_frame(ids, who, what)


def gold_labels(sim: dict, n: int):
    """n labels on gold pairs ("chosen" = the annotator picked the truly better response)."""
    k = np.arange(n) % N_GOLD
    return labels_frame([f"g{i:04d}" for i in k.tolist()], [ANNOTATORS[a] for a in sim["gold_ann"][k].tolist()],
                        ["chosen" if r else "rejected" for r in sim["gold_label_right"][k].tolist()])


def final_accuracy(sim: dict, resolved) -> float:
    """Accuracy over all run pairs: the judge's label ("chosen"), replaced by the resolved preference where resolved."""
    final_chosen = np.ones(N_RUN, dtype=bool)
    if resolved is not None:
        for pid, pref, status in resolved.select("pair_id", "preference", "status").iter_rows():
            if status == "resolved" and pref in ("chosen", "rejected"):
                final_chosen[int(pid[1:])] = pref == "chosen"
    return float(np.mean(final_chosen == sim["run_right"]))


def judge_map(routed: np.ndarray) -> dict:
    return {pair_id(i): "chosen" for i in routed.tolist()}  # pairs are oriented by the judge


# ---------------------------------------------------------------- the arms


def margin_routed(sim: dict, budget: int) -> np.ndarray:
    margin = 4 * (sim["run_s"] - 0.5)
    return np.flatnonzero(margin < MARGIN_THRESHOLD)[: budget // LABELS_PER_PAIR]  # in the run's order, first come


def majority_arm(sim: dict, routed: np.ndarray) -> float:
    from labeling.aggregate import majority

    if routed.size == 0:
        return float(np.mean(sim["run_right"]))
    return final_accuracy(sim, majority(run_labels(sim, routed), TIE_RULE, LABELS_PER_PAIR, judge_map(routed)))


def calibration(sim: dict) -> dict:
    """coverage_curve / calibrator / pick_threshold on the gold pairs; the run pairs ordered least confident first."""
    from pipeline.calibrate import calibrator, coverage_curve, pick_threshold

    conf, correct = sim["gold_s"].tolist(), sim["gold_right"].astype(float).tolist()
    curve = coverage_curve(conf, correct)
    p_right = calibrator(conf, correct)(sim["run_s"])
    order = np.lexsort((sim["run_s"], p_right))  # lowest calibrated P(right) first, then lowest s
    return {"order": order, "pick": pick_threshold(curve, TARGET_ACCURACY), "p_right": p_right}


def calibrated_split(budget: int) -> tuple[int, int]:
    """(gold labels, run pairs) of arm (d) within a budget."""
    n_gold = round(GOLD_SHARE * budget)
    return n_gold, (budget - n_gold) // LABELS_PER_PAIR


def calibrated_arm(sim: dict, cal: dict, budget: int, use_gold: bool = True) -> tuple[float, dict]:
    from labeling.aggregate import dawid_skene

    n_gold, n_pairs = calibrated_split(budget)
    routed = cal["order"][:n_pairs]
    if routed.size == 0:
        return float(np.mean(sim["run_right"])), {}
    resolved, reliability = dawid_skene(run_labels(sim, routed), TIE_RULE, LABELS_PER_PAIR, judge_map(routed),
                                        gold_labels=gold_labels(sim, n_gold) if n_gold and use_gold else None, judge_votes=None)
    return final_accuracy(sim, resolved), reliability


def bayes_accuracy(sim: dict) -> np.ndarray:
    """Per run pair, the best expected accuracy any rule can get from its two labels, knowing the truth's prior and the annotators."""
    q = judge_p_right(2 * (sim["run_s"] - 0.5))
    p1, p2 = ANNOTATOR_ACCURACY[sim["ann"][:, 0]], ANNOTATOR_ACCURACY[sim["ann"][:, 1]]
    total = np.zeros(N_RUN)
    for x1 in (True, False):  # x = the annotator said "chosen"
        for x2 in (True, False):
            if_chosen = np.where(x1, p1, 1 - p1) * np.where(x2, p2, 1 - p2)
            if_rejected = np.where(x1, 1 - p1, p1) * np.where(x2, 1 - p2, p2)
            total += np.maximum(q * if_chosen, (1 - q) * if_rejected)
    return total


def calibrated_bound(sim: dict, cal: dict, bayes: np.ndarray, budget: int) -> float:
    routed = cal["order"][: calibrated_split(budget)[1]]
    rest = np.ones(N_RUN, dtype=bool)
    rest[routed] = False
    return float((sim["run_right"][rest].sum() + bayes[routed].sum()) / N_RUN)


def simulation() -> list[dict]:
    started = time.perf_counter()
    sims = [simulate(seed) for seed in SEEDS]
    cals = [calibration(sim) for sim in sims]
    bayes = [bayes_accuracy(sim) for sim in sims]

    # the four arms at the shared budget
    arms = ("a", "b", "c", "d", "d_majority", "d_no_gold")
    acc = {arm: [] for arm in arms}
    used = {arm: [] for arm in arms}
    reliabilities = []
    for sim, cal in zip(sims, cals):
        acc["a"].append(float(np.mean(sim["run_right"])))
        used["a"].append(0)
        routed = margin_routed(sim, BUDGET)
        acc["b"].append(majority_arm(sim, routed))
        used["b"].append(LABELS_PER_PAIR * routed.size)
        routed = sim["random_order"][: BUDGET // LABELS_PER_PAIR]
        acc["c"].append(majority_arm(sim, routed))
        used["c"].append(LABELS_PER_PAIR * routed.size)
        accuracy, reliability = calibrated_arm(sim, cal, BUDGET)
        acc["d"].append(accuracy)
        n_gold, n_pairs = calibrated_split(BUDGET)
        used["d"].append(n_gold + LABELS_PER_PAIR * n_pairs)
        reliabilities.append(reliability)
        # diagnostics, not arms: (d)'s routing with (b)'s majority rule, and with Dawid-Skene given no gold labels
        routed = cal["order"][:n_pairs]
        acc["d_majority"].append(majority_arm(sim, routed))
        acc["d_no_gold"].append(calibrated_arm(sim, cal, BUDGET, use_gold=False)[0])
        used["d_majority"].append(used["d"][-1])
        used["d_no_gold"].append(used["d"][-1])
    main_s = time.perf_counter() - started

    # the budget sweep for (b) and (d)
    sweep_b, sweep_d, bound_d = {}, {}, {}
    last_routed, last = [None] * len(sims), [None] * len(sims)
    for budget in SWEEP:
        values = []
        for k, sim in enumerate(sims):
            routed = margin_routed(sim, budget)
            if last_routed[k] is None or not np.array_equal(routed, last_routed[k]):  # past the eligible pairs, nothing changes
                last_routed[k], last[k] = routed, majority_arm(sim, routed)
            values.append(last[k])
        sweep_b[budget] = values
    reached_d = None
    for budget in SWEEP:
        bound_d[budget] = float(np.mean([calibrated_bound(sim, cal, b, budget) for sim, cal, b in zip(sims, cals, bayes)]))
        if budget == BUDGET:
            sweep_d[budget] = acc["d"]
        elif budget == SWEEP[-1] or (reached_d is None and bound_d[budget] >= TARGET_ACCURACY - BOUND_SLACK):
            sweep_d[budget] = [calibrated_arm(sim, cal, budget)[0] for sim, cal in zip(sims, cals)]
        if reached_d is None and budget in sweep_d and np.mean(sweep_d[budget]) >= TARGET_ACCURACY:
            reached_d = budget
    reached_b = next((b for b in SWEEP if np.mean(sweep_b[b]) >= TARGET_ACCURACY), None)
    seconds = time.perf_counter() - started

    # print
    mean = {arm: float(np.mean(v)) for arm, v in acc.items()}
    low = {arm: float(np.min(v)) for arm, v in acc.items()}
    names = {"a": "(a) judge only", "b": "(b) margin < 0.5, first come, majority", "c": "(c) random, majority",
             "d": "(d) calibrated, Dawid-Skene",
             "d_majority": "  diagnostic: (d)'s routing, majority", "d_no_gold": "  diagnostic: (d)'s routing, DS without gold"}
    print(f"simulation: {N_RUN} run pairs, {N_GOLD} gold pairs, seeds {list(SEEDS)}, budget {BUDGET} human labels")
    print(f"{'arm':42} {'accuracy (mean)':>15} {'min':>7} {'human labels':>13}   per seed")
    for arm in arms:
        print(f"{names[arm]:42} {mean[arm]:>15.4f} {low[arm]:>7.4f} {np.mean(used[arm]):>13.0f}   {[round(v, 4) for v in acc[arm]]}")
    picks = [cal["pick"] for cal in cals]
    print("calibration on gold, threshold for >= 0.90 (lower bound): "
          + ", ".join("none" if p is None else f"s >= {p['threshold']:.3f} (gold coverage {p['coverage']:.2f})" for p in picks))
    rel = {a: round(float(np.mean([r[a] for r in reliabilities if a in r])), 3) for a in ANNOTATORS}
    print(f"Dawid-Skene reliability at {BUDGET} (mean over seeds; true 0.90 / 0.80 / 0.60): {rel}")
    print(f"{'budget':>7} {'(b) acc':>8} {'(b) labels':>10} {'(d) acc':>8} {'(d) bound':>9}")
    for budget in SWEEP:
        b_used = np.mean([LABELS_PER_PAIR * margin_routed(sim, budget).size for sim in sims])
        d = f"{np.mean(sweep_d[budget]):.4f}" if budget in sweep_d else "-"
        print(f"{budget:>7} {np.mean(sweep_b[budget]):>8.4f} {b_used:>10.0f} {d:>8} {bound_d[budget]:>9.4f}")
    print(f"({seconds:.1f} s; the four arms at {BUDGET}: {main_s:.1f} s)")

    diff_b, diff_c = mean["d"] - mean["b"], mean["d"] - mean["c"]
    best_d = max(sweep_d, key=lambda b: np.mean(sweep_d[b]))
    best_b = max(sweep_b, key=lambda b: np.mean(sweep_b[b]))
    fewer = reached_d is not None and (reached_b is None or reached_d < reached_b)

    def not_reached(best: int, sweep: dict) -> str:
        return f"not reached (best {np.mean(sweep[best]):.3f} at {best})"

    rows = [
        {"name": f"final-label accuracy at {BUDGET} labels, (d) calibrated+DS vs (b) margin routing", "value": round(mean["d"], 4),
         "baseline": round(mean["b"], 4), "ratio": round(mean["d"] / mean["b"], 3), "target": "(d) >= (b) + 0.05",
         "ok": diff_b >= 0.05, "difference": round(diff_b, 4), "value_min": round(low["d"], 4), "baseline_min": round(low["b"], 4),
         "labels": round(float(np.mean(used["d"]))), "baseline_labels": round(float(np.mean(used["b"])))},
        {"name": f"final-label accuracy at {BUDGET} labels, (d) calibrated+DS vs (c) random routing", "value": round(mean["d"], 4),
         "baseline": round(mean["c"], 4), "ratio": round(mean["d"] / mean["c"], 3), "target": "(d) >= (c) + 0.05",
         "ok": diff_c >= 0.05, "difference": round(diff_c, 4), "value_min": round(low["d"], 4), "baseline_min": round(low["c"], 4),
         "labels": round(float(np.mean(used["d"]))), "baseline_labels": round(float(np.mean(used["c"])))},
        {"name": "final-label accuracy, (a) judge only (no people)", "value": round(mean["a"], 4), "baseline": None, "ratio": None,
         "target": "(reported)", "ok": None, "value_min": round(low["a"], 4), "labels": 0},
        {"name": f"diagnostic at {BUDGET}: (d)'s routing resolved by majority, vs (d)", "value": round(mean["d_majority"], 4),
         "baseline": round(mean["d"], 4), "ratio": round(mean["d_majority"] / mean["d"], 3), "target": "(reported)", "ok": None,
         "value_min": round(low["d_majority"], 4)},
        {"name": f"diagnostic at {BUDGET}: (d)'s routing, Dawid-Skene without gold labels, vs (d)", "value": round(mean["d_no_gold"], 4),
         "baseline": round(mean["d"], 4), "ratio": round(mean["d_no_gold"] / mean["d"], 3), "target": "(reported)", "ok": None,
         "value_min": round(low["d_no_gold"], 4)},
        {"name": f"human labels to reach {TARGET_ACCURACY} accuracy, (d) vs (b)",
         "value": reached_d if reached_d is not None else not_reached(best_d, sweep_d),
         "baseline": reached_b if reached_b is not None else not_reached(best_b, sweep_b), "ratio": None,
         "target": "(d) reaches it with fewer labels than (b)", "ok": fewer, "unit": None,
         "bound_at_max": round(bound_d[SWEEP[-1]], 4)},
    ]
    for r in rows:
        r.setdefault("unit", None)
    print(f"target (d) >= (b) + 0.05: {'met' if rows[0]['ok'] else 'missed'} ({diff_b:+.4f}); "
          f"(d) >= (c) + 0.05: {'met' if rows[1]['ok'] else 'missed'} ({diff_c:+.4f}); "
          f"(d) reaches {TARGET_ACCURACY} with fewer labels than (b): {'met' if fewer else 'missed'} "
          f"((d) {rows[-1]['value']}, (b) {rows[-1]['baseline']})")
    # why a miss is a miss of the method or of the simulation: no rule can beat the Bayes bound at this budget
    print(f"Bayes bound for (d)'s routing at {BUDGET} labels: {bound_d[BUDGET]:.4f}, i.e. at most "
          f"{bound_d[BUDGET] - mean['b']:+.4f} over (b) and {bound_d[BUDGET] - mean['c']:+.4f} over (c) for any aggregation; "
          f"at {SWEEP[-1]} labels: {bound_d[SWEEP[-1]]:.4f}")
    rows.append({"name": f"Bayes bound of (d)'s routing at {BUDGET} labels (true annotators and judge known), vs (b)",
                 "value": round(bound_d[BUDGET], 4), "baseline": round(mean["b"], 4), "ratio": round(bound_d[BUDGET] / mean["b"], 3),
                 "target": "(reported: a +0.05 target above this bound cannot be met)", "unit": None, "ok": None})
    return rows


# ---------------------------------------------------------------- part 2: the embedded judge on the shared gold pairs

GOLD_DIR = ROOT.parent / "shared" / "gold"
GOLD_LIMIT = int(os.environ.get("PREFAB_BENCH_GOLD_LIMIT", "40"))
GOLD_FILES = ("llmbar_natural", "llmbar_adversarial", "hhh")
METHODS = ("pairwise", "pairwise_prob", "pointwise")
# the demo's judge (data/configs/demo.yaml, `judge:`)
JUDGE = {"judges": [{"name": "smollm2-judge", "model": "embedded:smollm2", "batch_size": 16}], "scoring": "logprobs",
         "aspects": [{"name": "helpfulness", "weight": 2}, {"name": "instruction_following"}], "pairwise": True}
# ../shared/gold/README.md: LLMBar's evaluator (accuracy over both orders, consistency in brackets); the adversarial
# file pools Neighbor (134 pairs), GPTInst (92) and GPTOut (47), so its reference is their weighted mean
ADVERSARIAL_SUBSETS = {"neighbor": 134, "gptinst": 92, "gptout": 47}
REFERENCE_SUBSETS = {
    "GPT-4": {"natural": (0.955, 0.95), "neighbor": (0.787, 0.93), "gptinst": (0.864, 0.95), "gptout": (0.777, 0.94)},
    "ChatGPT": {"natural": (0.815, None), "neighbor": (0.194, None), "gptinst": (0.266, None), "gptout": (0.415, None)},
    "LLaMA-2-70B-chat": {"natural": (0.805, None), "neighbor": (0.246, None), "gptinst": (0.304, None), "gptout": (0.564, None)},
}
HHH_LONGER = 139 / 221


def references(stem: str) -> str:
    if stem == "hhh":
        return f"ref: longer response {HHH_LONGER:.2f} on all 221; random 0.5"
    parts = []
    for model, figures in REFERENCE_SUBSETS.items():
        if stem == "llmbar_natural":
            accuracy, consistency = figures["natural"]
        else:
            total = sum(ADVERSARIAL_SUBSETS.values())
            accuracy = sum(figures[s][0] * n for s, n in ADVERSARIAL_SUBSETS.items()) / total
            consistency = (sum(figures[s][1] * n for s, n in ADVERSARIAL_SUBSETS.items()) / total
                           if all(figures[s][1] is not None for s in ADVERSARIAL_SUBSETS) else None)
        parts.append(f"{model} {accuracy:.3f}" + (f" ({consistency:.2f})" if consistency is not None else ""))
    return "ref: " + ", ".join(parts) + ", random 0.5"


def check_demo_judge() -> None:
    import yaml

    demo = yaml.safe_load((ROOT / "data" / "configs" / "demo.yaml").read_text()).get("judge")
    if demo != JUDGE:
        print(f"note: data/configs/demo.yaml's judge section differs from this bench's: {demo}")


def gold_part() -> list[dict]:
    if GOLD_LIMIT <= 0:
        print("gold part skipped (PREFAB_BENCH_GOLD_LIMIT=0)")
        return []
    files = [GOLD_DIR / f"{stem}.jsonl" for stem in GOLD_FILES if (GOLD_DIR / f"{stem}.jsonl").exists()]
    if not files:
        reason = f"{GOLD_DIR} absent" if not GOLD_DIR.is_dir() else f"no {', '.join(GOLD_FILES)} .jsonl in {GOLD_DIR}"
        print(f"gold part skipped: {reason}")
        return [{"name": "embedded judge on shared gold", "value": None, "baseline": None, "ratio": None,
                 "target": f"skipped: {reason}", "unit": None, "ok": None}]

    import polars as pl

    from pipeline.cache import CallCache
    from pipeline.calibrate import calibrate, calibration_table
    from pipeline.config import CalibrateConfig, JudgeConfig
    from pipeline.gold import read_gold

    check_demo_judge()
    started = time.perf_counter()
    gold = read_gold(CalibrateConfig(gold=[str(f) for f in files], limit=GOLD_LIMIT))
    by_subset = gold  # the files' own source column (hhh-helpful, llmbar-adversarial-neighbor, ...)
    gold = gold.with_columns(pl.col("file").map_elements(lambda f: Path(f).stem, return_dtype=pl.String).alias("source"))
    judge_cfg = JudgeConfig.model_validate(JUDGE)
    with tempfile.TemporaryDirectory(prefix="prefab-bench-gold-") as tmp:
        cache = CallCache(Path(tmp) / "cache.sqlite")
        try:
            judgments, signals, table = calibrate(gold, judge_cfg, cache)
        finally:
            cache.close()
    seconds = time.perf_counter() - started
    subsets = calibration_table(by_subset, judgments, signals)

    rows = []
    print(f"embedded judge on {gold.height} gold pairs ({GOLD_LIMIT} per file at most), {seconds:.0f} s")
    print(f"{'file':20} {'method':14} {'n':>4} {'accuracy':>9} {'consistency':>11} {'picks A':>8} {'longer':>7}  references")
    for stem in GOLD_FILES:
        part = gold.filter(pl.col("source") == stem)
        if part.is_empty():
            continue
        chosen_len, rejected_len = part["chosen"].str.len_chars(), part["rejected"].str.len_chars()
        longer = float(((chosen_len > rejected_len).cast(pl.Float64) + 0.5 * (chosen_len == rejected_len).cast(pl.Float64)).mean())
        for method in METHODS:
            found = table.filter((pl.col("source") == stem) & (pl.col("method") == method) & (pl.col("judge") != "routing"))
            if found.is_empty():
                print(f"{stem:20} {method:14} (no row)")
                continue
            r = found.row(0, named=True)
            ref = references(stem)
            print(f"{stem:20} {method:14} {r['n']:>4} {_f(r['accuracy']):>9} {_f(r['consistency']):>11} {_f(r['position_a']):>8} "
                  f"{longer:>7.3f}  {ref}")
            rows.append({"name": f"embedded judge {method} accuracy, {stem} (n={r['n']}, vs choosing the longer response)",
                         "value": r["accuracy"], "baseline": round(longer, 4),
                         "ratio": round(r["accuracy"] / longer, 3) if r["accuracy"] is not None and longer else None,
                         "target": f"(reported) {ref}", "unit": None, "ok": None, "consistency": r["consistency"],
                         "position_a": r["position_a"], "failures": r["failures"], "seconds_gold": round(seconds, 1)})
            if method == "pairwise":
                rows.append({"name": f"embedded judge pairwise consistency, {stem} (n={r['n']})", "value": r["consistency"],
                             "baseline": None, "ratio": None, "target": f"(reported) {ref}", "unit": None, "ok": None,
                             "position_a": r["position_a"]})
    print("per subset (pairwise): " + ", ".join(
        f"{r['source']} {_f(r['accuracy'])} ({_f(r['consistency'])}, n={r['n']})"
        for r in subsets.filter((pl.col("method") == "pairwise") & (pl.col("source") != "all")).iter_rows(named=True)))
    return rows


def _f(value) -> str:
    return "" if value is None else f"{value:.3f}"


def main() -> list[dict]:
    rows = simulation()
    try:
        rows += gold_part()
    except Exception as e:  # the simulation's rows still count
        traceback.print_exc()
        rows.append({"name": "embedded judge on shared gold", "value": None, "baseline": None, "ratio": None,
                     "target": f"error: {type(e).__name__}: {e}"[:200], "unit": None, "ok": False})
    return rows


if __name__ == "__main__":
    main()
