"""Adaptive second opinions: which human pairs are in the annotators' queue, and keeping Argilla's queue to that.

A human pair gets one more label only while its confidence (labeling/posterior.py) is below the target, it has
fewer than `max_labels_per_pair` labels and the label budget can pay for it. A pair not yet labeled has the judge's
calibrated confidence. The budget goes first to the pairs where labels buy the most accuracy: a pair's `worth` is
the most expected accuracy per label that any plan of its remaining labels buys, from annotators who have not
labeled it (their estimated accuracy; someone new at the prior's). One label alone is a poor guide: from an
annotator right with P = a, a pair at confidence c gains max(0, a - c), nothing where a <= c, yet two such labels
that agree against it can still overturn it; so the worth looks ahead over all the labels the pair may still get.

What it rests on in Argilla 2.8, unmodified, through its public API:
- with the overlap distribution a record stays in the queue until it has `min_submitted` submitted responses, and
  an annotator's queue never shows a record they have answered; so the dataset's `min_submitted` is
  `max_labels_per_pair`, and "never the same pair twice" is Argilla's own rule;
- a record's status cannot be set through the API (its status follows its responses), so a pair leaves the
  queue by the deletion of its record, once its labels are saved in the run. A record is deleted only when its
  responses are still those the pull saved (checked again just before), and a pair that has left the queue with
  labels is never put back: a new record would show it again to whoever labeled it;
- with a budget, the queue holds only the pairs whose remaining labels (up to the maximum: Argilla cannot stop a
  record at fewer than `min_submitted`) the budget can pay for, so the budget holds whatever people do between pulls.
"""

import numpy as np
import polars as pl

from labeling.agreement import submitted
from pipeline.core.schema import TABLES, empty

OUT_OF_QUEUE = (
    "settled",
    "max_labels",
    "closed",
    "over_budget",
)  # states whose labeled pairs prefab takes out of Argilla
LEVELS = 3  # accuracies a pool of annotators is summarised by, for the worth's look-ahead


def _value(p: np.ndarray, pool: tuple[tuple[float, int], ...], depth: int, cost: np.ndarray) -> np.ndarray:
    """Expected accuracy, less `cost` per label spent, of the best plan for pairs at P(right) = p (pairs, 1), with up
    to `depth` more labels from `pool` ((accuracy, how many annotators), each answers at most once, the next one
    uniform among them); `cost` per pair (pairs, 1)."""
    stop = np.maximum(p, 1 - p) + np.zeros_like(cost)
    if depth == 0 or not pool:
        return stop
    everyone = sum(n for _, n in pool)
    go_on = -cost
    for j, (a, n) in enumerate(pool):
        rest = tuple((b, m - (i == j)) for i, (b, m) in enumerate(pool) if m - (i == j))
        agree = p * a + (1 - p) * (1 - a)
        go_on = go_on + n / everyone * (
            agree * _value(p * a / agree, rest, depth - 1, cost)
            + (1 - agree) * _value(p * (1 - a) / (1 - agree), rest, depth - 1, cost)
        )
    return np.maximum(stop, go_on)


def worth(confidence: list[float], pool: tuple[tuple[float, int], ...], depth: int) -> np.ndarray:
    """Per pair, the highest price of a label (in expected accuracy) at which labeling it further still pays: the
    most accuracy per label any plan of its next `depth` labels buys; 0 where no label could change its answer.
    Found by bisection (a label never buys more than 0.5)."""
    p = np.asarray(confidence, dtype=float)[:, None]
    stop = np.maximum(p, 1 - p)
    low, high = np.zeros_like(p), np.full_like(p, 0.5)
    for _ in range(30):
        price = (low + high) / 2
        pays = _value(p, pool, depth, price) > stop + 1e-12
        low, high = np.where(pays, price, low), np.where(pays, high, price)
    return low[:, 0]


def who_labeled(labels: pl.DataFrame) -> dict[str, set[str]]:
    """The annotators whose submitted labels each run pair has (one label per annotator and pair, so their number is
    the pair's labels; a label gone from the server still counts: it was given)."""
    return {p: set(a) for p, a in submitted(labels).group_by("pair_id").agg("annotator").iter_rows()}


def worths(
    rows: list[dict], labeled_by: dict[str, set[str]], accuracy: dict[str, float], newcomer: float, max_labels: int
) -> list[float]:
    """Each row's worth: its remaining labels come from the annotators who have not labeled it and, past them, from
    people new at `newcomer`. A pool is summarised as at most LEVELS accuracies (rounded to 0.01), so that a large
    team costs no more than a small one and pairs with the same pool are computed together."""
    groups: dict[tuple, list[int]] = {}
    for r, row in enumerate(rows):
        depth = max_labels - row["labels"]
        pool = sorted(a for w, a in accuracy.items() if w not in labeled_by.get(row["pair_id"], set()))
        pool += [newcomer] * max(0, depth - len(pool))
        levels = [
            (round(float(np.mean(part)), 2), len(part))
            for part in np.array_split(pool, min(LEVELS, len(pool)) or 1)
            if len(part)
        ]
        key = (tuple(levels), depth)
        groups.setdefault(key, []).append(r)
    out = [0.0] * len(rows)
    for (pool, depth), members in groups.items():
        for r, w in zip(members, worth([rows[r]["confidence"] for r in members], pool, depth), strict=True):
            out[r] = round(float(w), 6)
    return out


def plan(
    human: pl.DataFrame,
    resolved: pl.DataFrame,
    labels: pl.DataFrame,
    on_server: set[str],
    *,
    target: float,
    max_labels: int,
    budget: int | None,
    accuracy: dict[str, float] | None = None,
    newcomer: float = 0.7,
) -> pl.DataFrame:
    """The `queue` table: per human pair (pair_id, confidence prior to people), its labels, confidence, worth and state.

    accuracy: the annotators' estimated accuracy (pull's resolution); newcomer: an annotator's before any label.
    The budget goes to pairs by worth, highest first (`priority`).

    States: queued (in the annotators' queue), settled (confidence reached the target), max_labels, over_budget
    (would need labels the budget cannot pay for), closed (left the queue below the target; never asked again),
    not_started (over budget with no label yet: pushed once the budget allows).
    """
    labeled_by = who_labeled(labels)
    n = {pair_id: len(annotators) for pair_id, annotators in labeled_by.items()}
    confidence = dict(resolved.filter(pl.col("confidence").is_not_null()).select("pair_id", "confidence").iter_rows())
    rows = []
    for pair_id, prior in human.select("pair_id", "confidence").iter_rows():
        k = n.get(pair_id, 0)
        if k:
            conf = confidence.get(pair_id, 0.5)  # tie/both_bad answers carry no confidence: ask again while it can
        else:
            conf = max(prior, 1 - prior) if prior is not None else 0.5
        rows.append({"pair_id": pair_id, "labels": k, "confidence": round(conf, 6), "worth": 0.0, "state": None})
    for row, w in zip(rows, worths(rows, labeled_by, accuracy or {}, newcomer, max_labels), strict=True):
        row["worth"] = w
    table = pl.DataFrame(rows, schema=TABLES["queue"], orient="row") if rows else empty("queue")
    left = None if budget is None else budget - int(table["labels"].sum())
    states = {}
    for row in priority(table).iter_rows(named=True):
        k, pair_id = row["labels"], row["pair_id"]
        if row["confidence"] >= target and k:
            states[pair_id] = "settled"
        elif k >= max_labels:
            states[pair_id] = "max_labels"
        elif k and pair_id not in on_server:
            states[pair_id] = "closed"
        elif left is not None and max_labels - k > left:
            states[pair_id] = "over_budget" if k else "not_started"
        else:
            states[pair_id] = "queued"
            if left is not None:
                left -= max_labels - k
    return table.with_columns(pl.col("pair_id").replace_strict(states, return_dtype=pl.String).alias("state")).sort(
        "pair_id"
    )


def priority(queue: pl.DataFrame) -> pl.DataFrame:
    """The queue in the order the budget serves it: highest worth first, then least confident."""
    return queue.sort("worth", "confidence", "pair_id", descending=[True, False, False])


def budget_info(queue: pl.DataFrame, budget: int | None) -> dict:
    """How the label budget was spent, for the pull's counts."""
    states = dict(queue.group_by("state").len().iter_rows()) if queue.height else {}
    info = {
        f"queue_{s}": states.get(s, 0)
        for s in ("queued", "settled", "max_labels", "closed", "over_budget", "not_started")
    }
    info["labels_on_run_pairs"] = int(queue["labels"].sum()) if queue.height else 0
    if budget is not None:
        info["label_budget"] = budget
    return info


def answered(record: dict) -> int:
    """Submitted and discarded responses of a record, as fetched."""
    return sum(r["status"] in ("submitted", "discarded") for r in record.get("responses") or [])


SHOWN = 30  # pairs listed by `prefab status`; the queue table has them all


def queue_status(run):
    """`prefab status`: where the human pairs stand: labels so far, confidence, and what each still needs."""
    from rich.table import Table  # start-up: rich.table

    if not run.has("queue"):
        return None
    queue = run.read("queue")
    states = ", ".join(f"{s} {n}" for s, n in queue.group_by("state").len().sort("state").iter_rows())
    table = Table(title=f"human pairs: {states} (labels so far: {int(queue['labels'].sum())})")
    for col in ("pair", "labels", "confidence", "worth", "state", "needs"):
        table.add_column(col)
    order = {"queued": 0, "over_budget": 1, "not_started": 2, "closed": 3, "max_labels": 4, "settled": 5}
    ranked = (
        priority(queue)
        .with_columns(pl.col("state").replace_strict(order, default=9).alias("rank"))
        .sort("rank", maintain_order=True)
    )
    for r in ranked.head(SHOWN).iter_rows(named=True):
        needs = "a first label" if r["state"] == "queued" and not r["labels"] else NEEDS.get(r["state"], "")
        worth_now = f"{r['worth']:.3f}" if r["worth"] is not None else ""
        table.add_row(r["pair_id"], str(r["labels"]), f"{r['confidence']:.2f}", worth_now, r["state"], needs)
    if queue.height > SHOWN:
        table.caption = f"{queue.height - SHOWN} more in {run.path / 'queue.parquet'}"
    return table


NEEDS = {
    "queued": "one more label, from someone new",
    "over_budget": "labels the budget cannot pay for",
    "not_started": "a first label, once the budget allows",
    "closed": "none: left the queue below the target",
    "max_labels": "none: it has the most labels a pair may get",
    "settled": "none: at the target confidence",
}
status_sections = [queue_status]
