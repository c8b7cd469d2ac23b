"""`prefab pull`: annotators' answers from Argilla into the `labels` table, resolved into `resolved`.

A/B answers are mapped back to the pair's chosen/rejected through the candidate ids stored, hidden, on
each record. Labels are merged into what earlier pulls saw, never replaced wholesale: a label that
vanished from the server is kept as last seen, with `missing_since` set.
"""

import signal
import time
from datetime import UTC, datetime

import polars as pl

from labeling.aggregate import pair_prior_draws, pair_priors, resolve_labels
from labeling.agreement import agreement, judge_labels
from labeling.dataset import LABELS, PREFERENCE, RATING_A, RATING_B, RATIONALE, a_is_chosen, to_label
from labeling.push import (
    DELETE_BATCH,
    add_pairs,
    call,
    dataset_name,
    fetch_records,
    find_dataset,
    gold_mapping,
    queue_plan,
    server_errors,
    usernames,
)
from labeling.queue import OUT_OF_QUEUE, answered, budget_info
from labeling.settings import LabelingConfig
from pipeline.core.config import Config
from pipeline.core.errors import LabelingError
from pipeline.core.progress import console, summary
from pipeline.core.schema import TABLES
from pipeline.core.store import Run

KEY = ["pair_id", "annotator"]


def responses_frame(records: list[dict], users: dict[str, str]) -> pl.DataFrame:
    """One row per submitted or discarded response, still in A/B terms, with the record's hidden mapping."""
    rows = []
    for record in records:
        meta = record.get("metadata") or {}
        for response in record.get("responses") or []:
            if response["status"] not in ("submitted", "discarded"):
                continue  # drafts are work in progress
            values = response.get("values") or {}

            def value(name, values=values):
                return (values.get(name) or {}).get("value")

            rows.append(
                {
                    "pair_id": record["external_id"],
                    "annotator": users.get(response["user_id"], response["user_id"]),
                    "status": response["status"],
                    "label_ab": value(PREFERENCE),
                    "rationale": value(RATIONALE) or None,
                    "rating_a": value(RATING_A),
                    "rating_b": value(RATING_B),
                    "updated_at": response.get("updated_at") or response.get("inserted_at"),
                    "candidate_a": meta.get("candidate_a"),
                    "candidate_b": meta.get("candidate_b"),
                    "a_is_chosen": meta.get("a_is_chosen"),
                }
            )
    schema = {
        "pair_id": pl.String,
        "annotator": pl.String,
        "status": pl.String,
        "label_ab": pl.String,
        "rationale": pl.String,
        "rating_a": pl.Int32,
        "rating_b": pl.Int32,
        "updated_at": pl.String,
        "candidate_a": pl.String,
        "candidate_b": pl.String,
        "a_is_chosen": pl.String,
    }
    return pl.DataFrame(rows, schema=schema, orient="row")


def side_of_chosen(row: dict, pairs: dict[str, dict]) -> bool:
    """Whether response A was the pair's chosen candidate, from the most reliable source at hand.

    The pairs table as it is now wins (a re-run may have swapped chosen and rejected of the same two
    candidates: the pair id is order-free); then what the record says; then the pair-id coin flip.
    """
    pair = pairs.get(row["pair_id"])
    if pair and row["candidate_a"] in (pair["chosen_id"], pair["rejected_id"]):
        return row["candidate_a"] == pair["chosen_id"]
    if row["a_is_chosen"] in ("true", "false"):
        return row["a_is_chosen"] == "true"
    return a_is_chosen(row["pair_id"])


def to_labels(responses: pl.DataFrame, pairs: pl.DataFrame) -> pl.DataFrame:
    """Responses in A/B terms -> rows of the labels table, relative to each pair's chosen/rejected."""
    by_id = {p["pair_id"]: p for p in pairs.select("pair_id", "chosen_id", "rejected_id").iter_rows(named=True)}
    rows = []
    for r in responses.iter_rows(named=True):
        a_chosen = side_of_chosen(r, by_id)
        if r["status"] == "submitted" and r["label_ab"] not in LABELS:
            raise LabelingError(
                f"record {r['pair_id']!r}: {r['annotator']}'s answer {r['label_ab']!r} is not one of {list(LABELS)}",
                hint="the dataset's preference question was changed outside prefab; push to a new dataset name",
            )
        rows.append(
            {
                "pair_id": r["pair_id"],
                "annotator": r["annotator"],
                "status": r["status"],
                "label": to_label(r["label_ab"], a_chosen) if r["status"] == "submitted" else None,
                "rationale": r["rationale"],
                "updated_at": _utc(r["updated_at"]),
                "label_ab": r["label_ab"],
                "rating_chosen": r["rating_a"] if a_chosen else r["rating_b"],
                "rating_rejected": r["rating_b"] if a_chosen else r["rating_a"],
                "missing_since": None,
            }
        )
    return pl.DataFrame(rows, schema=TABLES["labels"], orient="row")


def _utc(text: str | None) -> datetime | None:
    """Argilla's timestamps are UTC, written without an offset."""
    if not text:
        return None
    t = datetime.fromisoformat(text)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def merge_labels(
    old: pl.DataFrame, new: pl.DataFrame, now: datetime, taken_out: set[str] = frozenset()
) -> pl.DataFrame:
    """What the server has now, plus every earlier label it no longer has (kept, marked missing_since), except on the
    pairs prefab took out of the queue itself (their records are gone because they were settled)."""
    gone = old.join(new.select(KEY), on=KEY, how="anti").with_columns(
        pl.when(pl.col("pair_id").is_in(list(taken_out)))
        .then(pl.col("missing_since"))
        .otherwise(pl.col("missing_since").fill_null(pl.lit(now, dtype=pl.Datetime("us", "UTC"))))
        .alias("missing_since")
    )
    return pl.concat([new, gone]).sort(KEY)


def pull(run: Run, config: Config, client) -> dict:
    """Fetch, map, merge and resolve; write labels and resolved; return counts and agreement."""
    labeling = config.labeling or LabelingConfig()
    name = run.stage_info("push").get("dataset") or dataset_name(config, run)
    dataset = find_dataset(client, name, labeling.workspace)
    if dataset is None:
        raise LabelingError(
            f"dataset {name!r} is not in Argilla workspace {labeling.workspace!r}",
            hint=f"push the pairs first: prefab push --run {run.path}",
        )
    now = datetime.now(UTC)
    records = fetch_records(client, dataset)
    responses = responses_frame(records, usernames(client))
    gold = gold_mapping(run.read("gold")) if run.has("gold") else {}
    is_gold = responses["pair_id"].is_in(list(gold))
    pairs = run.read_or_empty("pairs")
    old = run.read_or_empty("labels")
    taken_out = set()
    if run.has("queue"):  # pairs prefab took out of the queue (labeling/queue.py): their records are gone on purpose
        taken_out = set(run.read("queue").filter(pl.col("state").is_in(OUT_OF_QUEUE))["pair_id"].to_list())
    labels = merge_labels(old, to_labels(responses.filter(~is_gold), pairs), now, taken_out)
    gold_pairs = pl.DataFrame(
        [{"pair_id": k, **v} for k, v in gold.items()],
        schema={"pair_id": pl.String, "gold_id": pl.String, "chosen_id": pl.String, "rejected_id": pl.String},
    )
    gold_labels = merge_labels(run.read_or_empty("gold_labels"), to_labels(responses.filter(is_gold), gold_pairs), now)
    new_or_changed = labels.join(old, on=list(TABLES["labels"]), how="anti", nulls_equal=True).height
    run.write("labels", labels)  # what came back is saved before anything is computed from it
    run.write("gold_labels", gold_labels)
    pair_judgments = run.read_or_empty("pair_judgments")
    resolution = resolve_labels(
        labels,
        gold_labels,
        judge_labels(pairs, pair_judgments),
        run.read_or_empty("gold_judgments"),
        labeling,
        pair_priors(pairs),
        pair_prior_draws(run, pairs),
    )
    resolved, annotators = resolution.resolved, resolution.annotators
    stats = agreement(labels, resolved, pairs, pair_judgments)
    run.write("resolved", resolved)
    run.write("annotators", annotators)
    queue_counts = {}
    if labeling.redundancy == "adaptive":
        queue_counts = update_queue(run, config, client, dataset, records, pairs, labels, resolved, annotators)
    counts = {
        "dataset": name,
        "labels": labels.height,
        "submitted": labels.filter(pl.col("status") == "submitted").height,
        "discarded": labels.filter(pl.col("status") == "discarded").height,
        "missing_on_server": labels.filter(pl.col("missing_since").is_not_null()).height,
        "new_or_changed": new_or_changed,
        "resolved": resolved.filter(pl.col("status") == "resolved").height,
        "split": resolved.filter(pl.col("status") == "split").height,
        "pending": resolved.filter(pl.col("status") == "pending").height,
        "changed": new_or_changed > 0,
        "gold_answers": gold_labels.filter(pl.col("status") == "submitted").height,
        "flagged_annotators": annotators.filter(pl.col("flagged"))["annotator"].to_list(),
        "aggregation": labeling.aggregation,
    }
    if resolved.filter(pl.col("confidence").is_not_null()).height:
        counts["mean_confidence"] = round(float(resolved["confidence"].mean()), 4)
    if resolution.model is not None:
        counts |= human_accuracy(resolution, resolved)
    return {**counts, **queue_counts, "agreement": stats}


def update_queue(
    run: Run,
    config: Config,
    client,
    dataset,
    records: list[dict],
    pairs: pl.DataFrame,
    labels: pl.DataFrame,
    resolved: pl.DataFrame,
    annotators: pl.DataFrame,
) -> dict:
    """Adaptive redundancy after a pull: the queue planned from the labels just saved, and the dataset's run records
    made its `queued` pairs (labeling/queue.py says why this way). Gold records are not in the queue and stay."""
    labeling = config.labeling or LabelingConfig()
    queue = queue_plan(config, pairs, labels, resolved, annotators, {r["external_id"] for r in records})
    queued = set(queue.filter(pl.col("state") == "queued")["pair_id"].to_list())
    run_pairs = set(queue["pair_id"].to_list())
    on_server = {r["external_id"]: r for r in records if r["external_id"] in run_pairs}
    leaving = [p for p in on_server if p not in queued]
    removed = 0
    if leaving:
        now = {
            r["external_id"]: r for r in fetch_records(client, dataset)
        }  # an answer given since the pull read them: not yet
        ids = [now[p]["id"] for p in leaving if p in now and answered(now[p]) == answered(on_server[p])]
        for i in range(0, len(ids), DELETE_BATCH):
            batch = ids[i : i + DELETE_BATCH]
            call(
                lambda batch=batch: client.api.http_client.delete(
                    f"/api/v1/datasets/{dataset.id}/records", params={"ids": ",".join(batch)}
                )
            )
            removed += len(batch)
    missing = sorted(queued - set(on_server))
    added = add_pairs(run, config, client, dataset, missing) if missing else 0
    run.write("queue", queue)
    return budget_info(queue, labeling.label_budget) | {"removed_from_queue": removed, "added_to_queue": added}


def human_accuracy(resolution, resolved: pl.DataFrame) -> dict:
    """The stated accuracy of the resolved human labels (chosen/rejected), its 90% interval
    and whether it is measured."""
    sided = resolved.filter(pl.col("preference").is_in(["chosen", "rejected"]) & (pl.col("status") == "resolved"))
    stated = resolution.stated(sided["pair_id"].to_list(), sided["preference"].to_list())
    if stated["stated"] is None:
        return {}
    return {
        "human_accuracy": round(stated["stated"], 4),
        "human_low": round(stated["low"], 4),
        "human_high": round(stated["high"], 4),
        "human_basis": "assumed" if stated["assumed"] else "measured",
    }


def pull_stage(run: Run, config: Config, client) -> dict:
    """pull() recorded in the manifest as stage "pull" (status, time, counts, agreement)."""
    with run.stage("pull") as info, server_errors():
        result = pull(run, config, client)
        info.update({k: v for k, v in result.items() if k != "changed"})
    return result


def watch(run: Run, config: Config, client, interval: float, *, max_pulls: int | None = None) -> int:
    """Pull every `interval` seconds, printing when labels change, until Ctrl-C.

    Ctrl-C only sets a flag that is read between pulls: a KeyboardInterrupt raised mid-pull can land in a
    library's __del__, where Python prints and drops it, and the loop went on polling. A second Ctrl-C
    interrupts at once, as usual.
    """
    stop = []

    def on_ctrl_c(signum, frame):
        stop.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, on_ctrl_c)
    pulls = 0
    try:
        while not stop and (max_pulls is None or pulls < max_pulls):
            result = pull_stage(run, config, client)
            pulls += 1
            if result["changed"] or pulls == 1:
                console.print(
                    f"{datetime.now():%H:%M:%S} labels={result['labels']} submitted={result['submitted']} "
                    f"resolved={result['resolved']} (+{result['new_or_changed']} new or changed)"
                )
            until = time.monotonic() + interval
            while not stop and (max_pulls is None or pulls < max_pulls) and time.monotonic() < until:
                time.sleep(min(0.1, interval))
    finally:
        signal.signal(signal.SIGINT, previous)
    return pulls


def print_summary(result: dict) -> None:
    stats = result["agreement"]
    jh = stats["judge_human"]
    summary(
        "pull",
        {k: v for k, v in result.items() if k not in ("agreement", "changed")}
        | {
            "annotators": stats["annotators"],
            "krippendorff_alpha": stats["krippendorff_alpha"] if stats["krippendorff_alpha"] is not None else "n/a",
            "raw_agreement": stats["raw_agreement"] if stats["raw_agreement"] is not None else "n/a",
            "judge=human (ties)": jh["with_ties"]["agreement"] if jh["with_ties"]["agreement"] is not None else "n/a",
            "judge=human (no ties)": jh["without_ties"]["agreement"]
            if jh["without_ties"]["agreement"] is not None
            else "n/a",
            "flagged_annotators": ", ".join(result["flagged_annotators"]) or "none",
        },
    )
