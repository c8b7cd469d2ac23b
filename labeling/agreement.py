"""How far annotators agree with each other and with the judge.

Inter-annotator: Krippendorff's alpha (any number of annotators, missing labels allowed), Fleiss' kappa
(items that share the most common number of labels), Cohen's kappa per annotator pair, and raw
pairwise agreement. Judge vs human: the judge's verdict (its pairwise verdict when there is one, else
"chosen", since a pair is oriented by the judge's scores) against the resolved human preference, with
ties counted and without. The statistics come from krippendorff, statsmodels and scikit-learn.
"""

import itertools
import math
import warnings

import numpy as np
import polars as pl

CATEGORIES = ["chosen", "rejected", "tie", "both_bad"]


def submitted(labels: pl.DataFrame) -> pl.DataFrame:
    """The labels that count: submitted, with an answer."""
    return labels.filter((pl.col("status") == "submitted") & pl.col("label").is_not_null())


def _number(x) -> float | None:
    """A JSON-safe float: None where the statistic is undefined (one category, too few items)."""
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else round(x, 4)


def inter_annotator(labels: pl.DataFrame) -> dict:
    """Agreement among annotators over submitted labels (one label per pair and annotator)."""
    import krippendorff  # start-up: krippendorff
    from sklearn.metrics import cohen_kappa_score  # start-up: sklearn
    from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa  # start-up: statsmodels

    rows = submitted(labels)
    annotators = sorted(rows["annotator"].unique().to_list())
    pairs = sorted(rows["pair_id"].unique().to_list())
    out = {
        "annotators": len(annotators),
        "labels": rows.height,
        "pairs": len(pairs),
        "pairs_multi": 0,
        "krippendorff_alpha": None,
        "fleiss_kappa": None,
        "fleiss_items": 0,
        "raw_agreement": None,
        "cohen_kappa_mean": None,
        "cohen_kappa": {},
    }
    if not annotators:
        return out
    code = {c: i for i, c in enumerate(CATEGORIES)}
    a_index = {a: i for i, a in enumerate(annotators)}
    p_index = {p: i for i, p in enumerate(pairs)}
    matrix = np.full((len(annotators), len(pairs)), np.nan)
    for r in rows.iter_rows(named=True):
        matrix[a_index[r["annotator"]], p_index[r["pair_id"]]] = code[r["label"]]
    per_item = (~np.isnan(matrix)).sum(axis=0)
    multi = per_item >= 2
    out["pairs_multi"] = int(multi.sum())
    if not multi.any():
        return out

    values = matrix[:, multi]
    if len(np.unique(values[~np.isnan(values)])) > 1:
        out["krippendorff_alpha"] = _number(krippendorff.alpha(reliability_data=values, level_of_measurement="nominal"))
    elif values.size:
        out["krippendorff_alpha"] = 1.0  # everyone gave the same single label: perfect, though uninformative

    # Fleiss' kappa needs the same number of raters per item: take the most common count
    counts = per_item[multi]
    k = int(np.bincount(counts).argmax())
    same_k = matrix[:, per_item == k]
    table_rows = [col[~np.isnan(col)].astype(int) for col in same_k.T]
    if table_rows:
        table, _ = aggregate_raters(np.array(table_rows), n_cat=len(CATEGORIES))
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            out["fleiss_kappa"] = _number(fleiss_kappa(table, method="fleiss"))
        out["fleiss_items"] = len(table_rows)

    # raw agreement: share of agreeing annotator pairs within each item, averaged over items
    shares = []
    for col in matrix[:, multi].T:
        vals = col[~np.isnan(col)]
        agree = sum(a == b for a, b in itertools.combinations(vals, 2))
        shares.append(agree / math.comb(len(vals), 2))
    out["raw_agreement"] = _number(np.mean(shares))

    kappas = {}
    for (i, a), (j, b) in itertools.combinations(enumerate(annotators), 2):
        both = ~np.isnan(matrix[i]) & ~np.isnan(matrix[j])
        if both.sum() < 2:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kappa = cohen_kappa_score(
                matrix[i, both].astype(int), matrix[j, both].astype(int), labels=list(range(len(CATEGORIES)))
            )
        kappas[f"{a}|{b}"] = {"kappa": _number(kappa), "n": int(both.sum())}
    out["cohen_kappa"] = kappas
    defined = [v["kappa"] for v in kappas.values() if v["kappa"] is not None]
    out["cohen_kappa_mean"] = _number(np.mean(defined)) if defined else None
    return out


def judge_labels(pairs: pl.DataFrame, pair_judgments: pl.DataFrame) -> dict[str, str]:
    """pair_id -> the judge's verdict relative to the pair: chosen / rejected / tie."""
    from labeling.dataset import pairwise_verdicts  # start-up: pydantic, yaml

    verdicts = pairwise_verdicts(pair_judgments)
    out = {}
    for p in pairs.select("pair_id", "chosen_score", "rejected_score").iter_rows(named=True):
        if p["pair_id"] in verdicts:
            out[p["pair_id"]] = verdicts[p["pair_id"]]["label"]
        elif p["chosen_score"] is not None and p["chosen_score"] == p["rejected_score"]:
            out[p["pair_id"]] = "tie"
        else:
            out[p["pair_id"]] = "chosen"
    return out


def judge_vs_human(resolved: pl.DataFrame, judge: dict[str, str]) -> dict:
    """The judge's verdict against the resolved human preference. "both_bad" has no judge counterpart."""
    from sklearn.metrics import cohen_kappa_score  # start-up: sklearn

    human = {
        r["pair_id"]: r["preference"] for r in resolved.filter(pl.col("preference").is_not_null()).iter_rows(named=True)
    }
    with_ties = [(judge[p], h) for p, h in human.items() if p in judge and h in ("chosen", "rejected", "tie")]
    without = [(j, h) for j, h in with_ties if j != "tie" and h != "tie"]

    def score(items):
        if not items:
            return {"agreement": None, "kappa": None, "n": 0}
        j, h = zip(*items, strict=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kappa = cohen_kappa_score(j, h, labels=["chosen", "rejected", "tie"]) if len(items) >= 2 else None
        return {"agreement": _number(np.mean([a == b for a, b in items])), "kappa": _number(kappa), "n": len(items)}

    return {
        "with_ties": score(with_ties),
        "without_ties": score(without),
        "both_bad": sum(1 for h in human.values() if h == "both_bad"),
    }


def agreement(labels: pl.DataFrame, resolved: pl.DataFrame, pairs: pl.DataFrame, pair_judgments: pl.DataFrame) -> dict:
    """Everything the manifest stores under stages.pull.agreement."""
    return {**inter_annotator(labels), "judge_human": judge_vs_human(resolved, judge_labels(pairs, pair_judgments))}
