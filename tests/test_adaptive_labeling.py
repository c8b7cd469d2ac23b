"""Adaptive second opinions on the real embedded Argilla server: a pair is asked again only while its confidence is
below the target, never of someone who labeled it, leaves the queue once settled with its labels kept in the run, and
the label budget holds whatever annotators do between pulls."""

import numpy as np
import polars as pl
import pytest
from labeling_fixtures import unique
from labeling_runs import make_run
from test_push_pull import annotator, pick, respond

from labeling.settings import LabelingConfig

pytestmark = pytest.mark.server


def pending_for(client, dataset_id) -> dict[str, dict]:
    """external id -> record of the annotator's queue as the UI asks for it: records still pending,
    which they have not answered."""
    body = {
        "filters": {
            "and": [
                {"type": "terms", "scope": {"entity": "response", "property": "status"}, "values": ["pending"]},
                {"type": "terms", "scope": {"entity": "record", "property": "status"}, "values": ["pending"]},
            ]
        }
    }
    r = client.api.http_client.post(
        f"/api/v1/me/datasets/{dataset_id}/records/search", json=body, params={"limit": 100}
    )
    r.raise_for_status()
    return {item["record"]["external_id"]: item["record"] for item in r.json()["items"]}


def on_server(owner, dataset_id) -> set[str]:
    r = owner.api.http_client.get(f"/api/v1/datasets/{dataset_id}/records", params={"limit": 1000})
    r.raise_for_status()
    return {item["external_id"] for item in r.json()["items"]}


def exact_posterior(*priors: float) -> list[float]:
    """One annotator (accuracy p ~ Beta(7, 3), the default prior) agreed with the judge on pairs of these priors: each
    pair's P(the judge's side), by integrating over p on a grid (the model's answer, computed another way)."""
    p = np.linspace(0.0005, 0.9995, 2000)
    weight = p**6 * (1 - p) ** 2  # Beta(7, 3), unnormalised
    agree = [q * p + (1 - q) * (1 - p) for q in priors]  # P(the label says "chosen") given p
    joint = weight * np.prod(agree, axis=0)
    return [float(np.sum(joint / a * q * p) / np.sum(joint)) for q, a in zip(priors, agree, strict=True)]


def adaptive_run(tmp_path, name: str, labeling: LabelingConfig, priors: dict[int, float]):
    """A run of 8 pairs, 4 routed to people, whose human pairs carry the judge's calibrated confidence
    (priors by index)."""
    run, _ = make_run(tmp_path / unique(name), 8, labeling=labeling)
    run.update_manifest(config={**run.manifest()["config"], "labeling": labeling.model_dump(mode="json")})
    pairs = run.read("pairs")
    human = pairs.filter(pl.col("route") == "human")["pair_id"].to_list()
    confidence = {human[i]: p for i, p in priors.items()}
    run.write(
        "pairs",
        pairs.with_columns(
            pl.col("pair_id").replace_strict(confidence, default=None, return_dtype=pl.Float64).alias("confidence")
        ),
    )
    texts = dict(run.read("candidates").select("candidate_id", "text").iter_rows())
    chosen = {p: texts[c] for p, c in pairs.select("pair_id", "chosen_id").iter_rows()}
    rejected = {p: texts[r] for p, r in pairs.select("pair_id", "rejected_id").iter_rows()}
    return run, human, lambda record, pair: pick(record, {"chosen": chosen[pair], "rejected": rejected[pair]}, "chosen")


def test_a_pair_is_asked_again_until_settled_never_of_the_same_annotator(argilla_client, prefab, tmp_path):
    labeling = LabelingConfig(target_confidence=0.8, gold_share=0)
    run, human, chosen_side = adaptive_run(tmp_path, "adaptive", labeling, {0: 0.85, 1: 0.55, 2: 0.55, 3: 0.55})
    sure, unsure = human[0], human[1]
    assert prefab("push", "--run", run.path).exit_code == 0
    dataset = argilla_client.datasets(name=run.path.name, workspace="prefab")
    assert (
        dataset.settings.distribution.min_submitted == 3
    )  # max_labels_per_pair: Argilla keeps a record for more opinions
    assert on_server(argilla_client, dataset.id) == set(human)

    first, second = annotator(argilla_client, "first"), annotator(argilla_client, "second")
    queue = pending_for(first, dataset.id)
    assert set(queue) == set(human)
    for pair in (sure, unsure):  # the first annotator agrees with the judge on both
        respond(first, queue[pair]["id"], preference=chosen_side(queue[pair], pair))

    result = prefab("pull", "--run", run.path)
    assert result.exit_code == 0, result.output
    state = dict(run.read("queue").select("pair_id", "state").iter_rows())
    # with a 70% annotator (the prior) the judge's 0.85 becomes 0.93 (>= 0.8); its 0.55 becomes 0.74 (< 0.8)
    assert state[sure] == "settled" and state[unsure] == "queued", state
    resolved = {r["pair_id"]: r for r in run.read("resolved").iter_rows(named=True)}
    assert resolved[sure]["confidence"] == pytest.approx(exact_posterior(0.85, 0.55)[0], abs=0.015)
    assert resolved[unsure]["confidence"] == pytest.approx(exact_posterior(0.85, 0.55)[1], abs=0.015)
    # the settled pair left the queue, its label kept in the run; the other waits for another opinion,
    # not from the first
    assert on_server(argilla_client, dataset.id) == set(human) - {sure}
    assert run.read("labels").filter(pl.col("pair_id") == sure).height == 1
    assert unsure not in pending_for(first, dataset.id)
    queue = pending_for(second, dataset.id)
    assert unsure in queue
    respond(second, queue[unsure]["id"], preference=chosen_side(queue[unsure], unsure))

    result = prefab("pull", "--run", run.path)
    assert result.exit_code == 0, result.output
    row = run.read("resolved").filter(pl.col("pair_id") == unsure).row(0, named=True)
    assert (row["n_labels"], row["preference"], row["status"]) == (2, "chosen", "resolved") and row["confidence"] >= 0.8
    assert dict(run.read("queue").select("pair_id", "state").iter_rows())[unsure] == "settled"
    assert on_server(argilla_client, dataset.id) == set(human) - {sure, unsure}
    info = run.stage_info("pull")
    assert (info["queue_settled"], info["queue_queued"], info["labels_on_run_pairs"]) == (2, 2, 3)

    # a second pull changes nothing
    tables = {name: run.read(name) for name in ("labels", "resolved", "queue", "annotators")}
    result = prefab("pull", "--run", run.path)
    assert result.exit_code == 0, result.output
    info = run.stage_info("pull")
    assert (info["new_or_changed"], info["removed_from_queue"], info["added_to_queue"]) == (0, 0, 0)
    for name, before in tables.items():
        assert run.read(name).equals(before), name
    status = prefab("status", "--run", run.path)
    assert "settled 2" in status.output and "queued 2" in status.output


def test_the_label_budget_holds_whatever_annotators_do_between_pulls(argilla_client, prefab, tmp_path):
    labeling = LabelingConfig(label_budget=4, gold_share=0)  # at most 3 labels a pair: one new pair reserves 3
    run, human, chosen_side = adaptive_run(tmp_path, "budget", labeling, {0: 0.55, 1: 0.6, 2: 0.65, 3: 0.7})
    assert prefab("push", "--run", run.path).exit_code == 0
    info = run.stage_info("push")
    assert (info["pushed"], info["held_back"], info["label_budget"]) == (1, 3, 4)
    dataset = argilla_client.datasets(name=run.path.name, workspace="prefab")
    assert on_server(argilla_client, dataset.id) == {human[0]}  # the least confident first

    # three annotators answer everything they are shown before anyone pulls: Argilla stops the record at 3
    people = [annotator(argilla_client, f"eager{k}") for k in range(3)]
    for _ in range(2):
        for person in people:
            for pair, record in pending_for(person, dataset.id).items():
                respond(person, record["id"], preference=chosen_side(record, pair))
        result = prefab("pull", "--run", run.path)
        assert result.exit_code == 0, result.output
        labels = run.read("labels").filter(pl.col("status") == "submitted")
        assert labels.height <= 4
    queue = dict(run.read("queue").select("pair_id", "state").iter_rows())
    assert queue[human[0]] == "settled" and labels.height == 3  # three agreeing labels: past the 0.9 target
    # one label is left: no pair that may need three is put in front of people
    assert [queue[p] for p in human[1:]] == ["not_started"] * 3
    assert on_server(argilla_client, dataset.id) == set()
