"""Adaptive second opinions: which human pairs are in the annotators' queue, and keeping Argilla's queue to that.

A human pair gets one more label only while its confidence (labeling/posterior.py) is below the target, it has
fewer than `max_labels_per_pair` labels and the label budget can pay for it; the least confident pairs first,
which is where one more label is worth most (from an annotator right with P = a, a pair at confidence c gains
max(0, a - c) in expected accuracy). A pair not yet labeled has the judge's calibrated confidence.

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

import polars as pl

from labeling.agreement import submitted
from pipeline.schema import TABLES, empty

OUT_OF_QUEUE = ("settled", "max_labels", "closed", "over_budget")  # states whose labeled pairs prefab takes out of Argilla



def labels_so_far(labels: pl.DataFrame) -> dict[str, int]:
    """Submitted labels per run pair (a label gone from the server still counts: it was given)."""
    counts = submitted(labels).group_by("pair_id").len()
    return dict(counts.iter_rows())


def plan(human: pl.DataFrame, resolved: pl.DataFrame, labels: pl.DataFrame, on_server: set[str], *, target: float,
         max_labels: int, budget: int | None) -> pl.DataFrame:
    """The `queue` table: per human pair (pair_id, confidence prior to people), its labels, confidence and state.

    States: queued (in the annotators' queue), settled (confidence reached the target), max_labels, over_budget
    (would need labels the budget cannot pay for), closed (left the queue below the target; never asked again),
    not_started (over budget with no label yet: pushed once the budget allows).
    """
    n = labels_so_far(labels)
    confidence = dict(resolved.filter(pl.col("confidence").is_not_null()).select("pair_id", "confidence").iter_rows())
    rows = []
    for pair_id, prior in human.select("pair_id", "confidence").iter_rows():
        k = n.get(pair_id, 0)
        if k:
            conf = confidence.get(pair_id, 0.5)  # tie/both_bad answers carry no confidence: ask again while it can
        else:
            conf = max(prior, 1 - prior) if prior is not None else 0.5
        rows.append({"pair_id": pair_id, "labels": k, "confidence": round(conf, 6), "state": None})
    spent = sum(n.get(r["pair_id"], 0) for r in rows)
    left = None if budget is None else budget - spent
    for row in sorted(rows, key=lambda r: (r["confidence"], r["pair_id"])):
        k = row["labels"]
        if row["confidence"] >= target and k:
            row["state"] = "settled"
        elif k >= max_labels:
            row["state"] = "max_labels"
        elif k and row["pair_id"] not in on_server:
            row["state"] = "closed"
        elif left is not None and max_labels - k > left:
            row["state"] = "over_budget" if k else "not_started"
        else:
            row["state"] = "queued"
            if left is not None:
                left -= max_labels - k
    table = pl.DataFrame(rows, schema=TABLES["queue"], orient="row") if rows else empty("queue")
    return table.sort("pair_id")


def budget_info(queue: pl.DataFrame, budget: int | None) -> dict:
    """How the label budget was spent, for the pull's counts."""
    states = dict(queue.group_by("state").len().iter_rows()) if queue.height else {}
    info = {f"queue_{s}": states.get(s, 0) for s in ("queued", "settled", "max_labels", "closed", "over_budget", "not_started")}
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
    from rich.table import Table

    if not run.has("queue"):
        return None
    queue = run.read("queue")
    states = ", ".join(f"{s} {n}" for s, n in queue.group_by("state").len().sort("state").iter_rows())
    table = Table(title=f"human pairs: {states} (labels so far: {int(queue['labels'].sum())})")
    for col in ("pair", "labels", "confidence", "state", "needs"):
        table.add_column(col)
    order = {"queued": 0, "over_budget": 1, "not_started": 2, "closed": 3, "max_labels": 4, "settled": 5}
    for r in queue.sort(pl.col("state").replace_strict(order, default=9), "confidence").head(SHOWN).iter_rows(named=True):
        needs = "a first label" if r["state"] == "queued" and not r["labels"] else NEEDS.get(r["state"], "")
        table.add_row(r["pair_id"], str(r["labels"]), f"{r['confidence']:.2f}", r["state"], needs)
    if queue.height > SHOWN:
        table.caption = f"{queue.height - SHOWN} more in {run.path / 'queue.parquet'}"
    return table


NEEDS = {"queued": "one more label, from someone new", "over_budget": "labels the budget cannot pay for",
         "not_started": "a first label, once the budget allows", "closed": "none: left the queue below the target",
         "max_labels": "none: it has the most labels a pair may get", "settled": "none: at the target confidence"}
status_sections = [queue_status]
