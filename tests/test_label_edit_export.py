"""An annotator changes their mind in Argilla: after pull, the export follows the human, not the judge."""

import json

import polars as pl
import pytest
from labeling_fixtures import unique
from labeling_runs import make_run
from test_push_pull import annotator, my_records, pick, respond

pytestmark = pytest.mark.server


def exported_pair(run, prompt_id: str) -> dict:
    rows = []
    for name in ("dpo_train.jsonl", "dpo_test.jsonl"):
        path = run.path / "exports" / name
        if path.exists():
            rows += [json.loads(line) for line in path.read_text().splitlines()]
    user = run.read("prompts").filter(pl.col("prompt_id") == prompt_id)["messages"][0].to_list()[-1]["content"]
    return next(r for r in rows if r["prompt"][-1]["content"] == user)


def test_edited_label_flips_the_export(argilla_client, prefab, tmp_path):
    run, _ = make_run(tmp_path / unique("edited"), 4, human_every=1)
    assert prefab("push", "--run", run.path).exit_code == 0
    pair = run.read("pairs").row(0, named=True)
    texts = {r["candidate_id"]: r["text"] for r in run.read("candidates").iter_rows(named=True)}
    judge_chosen, judge_rejected = texts[pair["chosen_id"]], texts[pair["rejected_id"]]
    dataset = argilla_client.datasets(name=run.path.name, workspace="prefab")
    ann = annotator(argilla_client, "editor")
    record = next(r for r in my_records(ann, dataset.id) if r["external_id"] == pair["pair_id"])
    agree = pick(record, {"chosen": judge_chosen, "rejected": judge_rejected}, "chosen")

    respond(ann, record["id"], preference=agree)  # the human agrees with the judge first
    assert prefab("pull", "--run", run.path).exit_code == 0
    assert prefab("export", "--run", run.path, "--source", "human", "--test-share", "0").exit_code == 0
    line = exported_pair(run, pair["prompt_id"])
    assert (line["chosen"][-1]["content"], line["rejected"][-1]["content"]) == (judge_chosen, judge_rejected)

    # then edits the answer in Argilla: the other response is better
    response_id = next(r for r in my_records(ann, dataset.id) if r["external_id"] == pair["pair_id"])["responses"][0][
        "id"
    ]
    other = "b" if agree == "a" else "a"
    ann.api.http_client.put(
        f"/api/v1/responses/{response_id}", json={"values": {"preference": {"value": other}}, "status": "submitted"}
    ).raise_for_status()
    assert prefab("pull", "--run", run.path).exit_code == 0
    assert run.read("labels").filter(pl.col("pair_id") == pair["pair_id"])["label"].to_list() == ["rejected"]
    result = prefab("export", "--run", run.path, "--source", "human", "--test-share", "0")
    assert result.exit_code == 0, result.output
    line = exported_pair(run, pair["prompt_id"])
    assert (line["chosen"][-1]["content"], line["rejected"][-1]["content"]) == (judge_rejected, judge_chosen)
