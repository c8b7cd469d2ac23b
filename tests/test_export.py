"""prefab export: each format written from a real run directory and read back with `datasets`; split by
prompt; human labels override the judge; bad input fails clearly and leaves the previous export alone."""

import json
from datetime import UTC, datetime

import polars as pl
import pytest
from conftest import snapshot_dir
from labeling_runs import make_run

from pipeline.core.errors import ExportError
from pipeline.core.schema import TABLES
from pipeline.core.store import Run, candidate_id, pair_id
from training.export.selection import select_pairs
from training.export.stage import export
from training.settings import ExportConfig


def add_labels(run: Run, labels: dict[str, list[str]]) -> None:
    """labels table rows: pair_id -> one label per annotator ("chosen" | "rejected" | "tie" | "both_bad")."""
    now = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [
        {
            "pair_id": pid,
            "annotator": f"annotator-{k}",
            "status": "submitted",
            "label": label,
            "rationale": None,
            "updated_at": now,
            "label_ab": None,
            "rating_chosen": None,
            "rating_rejected": None,
            "missing_since": None,
        }
        for pid, values in labels.items()
        for k, label in enumerate(values)
    ]
    run.write("labels", pl.DataFrame(rows, schema=TABLES["labels"]))


def add_second_pairs(run: Run) -> None:
    """A third candidate and a second pair (auto) for every prompt: several pairs share a prompt."""
    prompts, candidates, pairs = run.read("prompts"), run.read("candidates"), run.read("pairs")
    new_c, new_p = [], []
    for pair in pairs.iter_rows(named=True):
        cid = candidate_id(pair["prompt_id"], "gen-mid", {"temperature": 1.0}, 0)
        new_c.append(
            {
                **candidates.filter(pl.col("candidate_id") == pair["chosen_id"]).row(0, named=True),
                "candidate_id": cid,
                "model": "gen-mid",
                "text": f"A middling answer to {pair['prompt_id']}.",
            }
        )
        new_p.append(
            {
                **pair,
                "pair_id": pair_id(pair["chosen_id"], cid),
                "rejected_id": cid,
                "rejected_score": 3.0,
                "margin": pair["chosen_score"] - 3.0,
                "route": "auto",
                "strategy": "all_above_margin",
            }
        )
    run.write("candidates", pl.concat([candidates, pl.DataFrame(new_c, schema=TABLES["candidates"])]))
    run.write("pairs", pl.concat([pairs, pl.DataFrame(new_p, schema=TABLES["pairs"])]))
    assert prompts.height == pairs.height


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def labeled_run(tmp_path):
    """8 prompts; pairs 0, 2, 4, 6 routed to humans and labeled: 0 agrees with the judge, 2 prefers the judge's
    rejected side, 4 is a tie, 6 is both bad; 1, 3, 5, 7 automatic."""
    run, config = make_run(tmp_path / "run", n_pairs=8)
    pairs = run.read("pairs")
    human = pairs.filter(pl.col("route") == "human")["pair_id"].to_list()
    add_labels(
        run, {human[0]: ["chosen"], human[1]: ["rejected", "rejected"], human[2]: ["tie"], human[3]: ["both_bad"]}
    )
    return run, config, pairs, human


def test_every_format_reads_back_with_datasets(labeled_run):
    from datasets import load_dataset

    run, _, pairs, human = labeled_run
    counts = export(run, ExportConfig(test_share=0.25))
    out = run.path / "exports"
    # 4 auto + 2 human (the tie and the both-bad pair are dropped)
    assert counts["exported"] == 6 and counts["by_source"] == {"auto": 4, "human": 2}
    assert counts["dropped"] == {"human_tie": 1, "human_both_bad": 1}
    for stem in ("dpo", "openai_dpo", "sft", "sft_pc"):
        files = {s: str(out / f"{stem}_{s}.jsonl") for s in ("train", "test")}
        ds = load_dataset("json", data_files=files)
        assert ds["train"].num_rows + ds["test"].num_rows == 6, stem
        assert ds["test"].num_rows >= 1
    dpo = load_dataset("json", data_files=str(out / "dpo_train.jsonl"))["train"]
    assert {"prompt", "chosen", "rejected"} <= set(dpo.column_names)
    row = dpo[0]
    assert row["prompt"][-1]["role"] == "user" and row["chosen"][0]["role"] == "assistant"
    assert row["chosen"][0]["content"] != row["rejected"][0]["content"]
    sft = read_jsonl(out / "sft_train.jsonl")
    assert all(r["messages"][-1]["role"] == "assistant" for r in sft)
    card = (out / "README.md").read_text()
    assert "gen-big" in card and "judge-1" in card and "source: human | 2" in card and "dropped: human_tie | 1" in card
    assert "chosen longer than rejected" in card


def test_openai_dpo_lines_have_the_documented_shape(labeled_run):
    """https://platform.openai.com/docs/guides/direct-preference-optimization (data format), checked by hand."""
    run, *_ = labeled_run
    export(run, ExportConfig(formats=["openai-dpo"], test_share=0.0))
    lines = (run.path / "exports" / "openai_dpo_train.jsonl").read_text().splitlines()
    assert len(lines) == 6
    for line in lines:
        row = json.loads(line)
        assert set(row) == {"input", "preferred_output", "non_preferred_output"}
        assert set(row["input"]) <= {"messages", "tools", "parallel_tool_calls"}
        messages = row["input"]["messages"]
        assert messages and all(
            set(m) == {"role", "content"}
            and m["role"] in ("system", "developer", "user", "assistant")
            and isinstance(m["content"], str)
            and m["content"]
            for m in messages
        )
        assert messages[-1]["role"] == "user"
        for side in ("preferred_output", "non_preferred_output"):
            assert isinstance(row[side], list) and len(row[side]) == 1
            assert (
                set(row[side][0]) == {"role", "content"}
                and row[side][0]["role"] == "assistant"
                and row[side][0]["content"]
            )
        assert row["preferred_output"][0]["content"] != row["non_preferred_output"][0]["content"]
    assert not (run.path / "exports" / "dpo_train.jsonl").exists()


def test_split_never_shares_a_prompt(tmp_path):
    run, _ = make_run(tmp_path / "run", n_pairs=10, human_every=100)
    run.write("pairs", run.read("pairs").with_columns(route=pl.lit("auto")))
    add_second_pairs(run)  # 20 automatic pairs, two per prompt
    counts = export(run, ExportConfig(test_share=0.3, seed=3))
    out = run.path / "exports"
    assert counts["exported"] == 20 and counts["test"] == 6  # 3 of 10 prompts, both of their pairs
    for stem in ("dpo", "sft", "sft_pc"):
        train = {r["prompt_id"] for r in read_jsonl(out / f"{stem}_train.jsonl")}
        test = {r["prompt_id"] for r in read_jsonl(out / f"{stem}_test.jsonl")}
        assert train and test and not train & test, stem
    splits = json.loads((out / "splits.json").read_text())
    assert len(splits["test"]) == 3 and not set(splits["train"]) & set(splits["test"])
    # one SFT row per prompt, the best-scored chosen response
    assert len(read_jsonl(out / "sft_train.jsonl")) + len(read_jsonl(out / "sft_test.jsonl")) == 10
    # the split is a function of the prompt and the seed: exporting again gives the same files
    before = snapshot_dir(out)
    export(run, ExportConfig(test_share=0.3, seed=3))
    assert snapshot_dir(out) == before
    export(run, ExportConfig(test_share=0.3, seed=4))
    assert json.loads((out / "splits.json").read_text())["test"] != splits["test"]


def test_human_label_overrides_the_judge_and_follows_an_edit(labeled_run):
    run, config, pairs, human = labeled_run
    texts = dict(run.read("candidates").select("candidate_id", "text").iter_rows())
    swapped = pairs.filter(pl.col("pair_id") == human[1]).row(0, named=True)
    judge_chosen, judge_rejected = texts[swapped["chosen_id"]], texts[swapped["rejected_id"]]

    def exported_row():
        export(run, ExportConfig(test_share=0.0))
        rows = {r["pair_id"]: r for r in read_jsonl(run.path / "exports" / "dpo_train.jsonl")}
        sft = {r["prompt_id"]: r for r in read_jsonl(run.path / "exports" / "sft_train.jsonl")}
        return rows.get(human[1]), sft.get(swapped["prompt_id"])

    row, sft = exported_row()
    assert row["chosen"][0]["content"] == judge_rejected and row["rejected"][0]["content"] == judge_chosen
    assert row["source"] == "human" and sft["messages"][-1]["content"] == judge_rejected
    # the annotators change their minds (an edit in Argilla, pulled into `labels`): the export follows
    add_labels(run, {human[0]: ["chosen"], human[1]: ["chosen", "chosen"], human[2]: ["tie"], human[3]: ["both_bad"]})
    row, sft = exported_row()
    assert row["chosen"][0]["content"] == judge_chosen and sft["messages"][-1]["content"] == judge_chosen
    # a tie kept in the judge's order when asked
    counts = export(run, ExportConfig(test_share=0.0, ties="judge"))
    assert counts["exported"] == 7 and "human_tie" not in counts["dropped"]


def test_a_pair_the_route_stage_dropped_is_left_out_under_its_reason_even_if_labeled(tmp_path):
    run, _ = make_run(tmp_path / "run", n_pairs=4, human_every=2)  # pairs 0 and 2 human, 1 and 3 auto
    pairs = run.read("pairs")
    ids = pairs["pair_id"].to_list()
    run.write(
        "pairs",
        pairs.with_columns(
            route=pl.when(pl.col("pair_id").is_in(ids[:2])).then(pl.lit("dropped")).otherwise(pl.col("route")),
            route_reason=pl.when(pl.col("pair_id").is_in(ids[:2]))
            .then(pl.lit("both_incorrect"))
            .otherwise(pl.col("route_reason")),
        ),
    )
    counts = export(run, ExportConfig(test_share=0.0))
    assert counts["dropped"] == {"both_incorrect": 2, "awaiting_labels": 1} and counts["by_source"] == {"auto": 1}
    # labeled before the verifier found both answers wrong: a preference between two wrong answers is still left out
    labeled = pl.DataFrame(
        {
            "pair_id": [ids[0]],
            "preference": ["chosen"],
            "agreement": [1.0],
            "n_labels": [1],
            "human_confidence": [0.9],
            "method": ["majority"],
        }
    )
    selected, dropped = select_pairs(run.read("pairs"), labeled, ExportConfig())
    assert dropped == {"both_incorrect": 2, "awaiting_labels": 1} and ids[0] not in selected["pair_id"].to_list()


def test_selection_by_source_margin_and_length(labeled_run):
    run, _, pairs, _ = labeled_run
    assert export(run, ExportConfig(sources=["human"], test_share=0.0))["by_source"] == {"human": 2}
    assert export(run, ExportConfig(sources=["auto"], test_share=0.0))["by_source"] == {"auto": 4}
    # the judge margin filters automatic pairs only: a human decision does not need a confident judge
    margins = pairs.filter(pl.col("route") == "auto")["margin"].to_list()
    counts = export(run, ExportConfig(min_margin=1.2, test_share=0.0))
    assert 0 < sum(m >= 1.2 for m in margins) < 4
    assert counts["by_source"] == {"auto": sum(m >= 1.2 for m in margins), "human": 2}
    # max_tokens, counted with the embedded tokenizer: one rambling answer pushes its pair over
    long_pair = pairs.filter(pl.col("route") == "auto").row(0, named=True)
    candidates = run.read("candidates")
    run.write(
        "candidates",
        candidates.with_columns(
            text=pl.when(pl.col("candidate_id") == long_pair["rejected_id"])
            .then(pl.lit("and so on " * 100))
            .otherwise(pl.col("text"))
        ),
    )
    counts = export(run, ExportConfig(max_tokens=200, test_share=0.0))
    assert counts["dropped"]["over_max_tokens"] == 1 and counts["exported"] == 5
    assert long_pair["pair_id"] not in (run.path / "exports" / "dpo_train.jsonl").read_text()
    with pytest.raises(ExportError, match="over_max_tokens=4"):
        export(run, ExportConfig(max_tokens=20, sources=["auto"], test_share=0.0))


def test_standard_strings_and_saved_hf_dataset(labeled_run, prefab, tmp_path):
    from datasets import load_from_disk

    run, *_ = labeled_run
    result = prefab(
        "export",
        "--run",
        run.path,
        "--format",
        "trl-dpo",
        "--format",
        "sft",
        "--standard",
        "--test-share",
        "0",
        "--save-hf",
        tmp_path / "hf",
    )
    assert result.exit_code == 0, result.output
    rows = read_jsonl(run.path / "exports" / "dpo_train.jsonl")
    assert all(isinstance(r["prompt"], str) and r["prompt"].endswith("<|im_start|>assistant\n") for r in rows)
    assert all(isinstance(r["chosen"], str) for r in rows)
    pc = read_jsonl(run.path / "exports" / "sft_pc_train.jsonl")
    assert isinstance(pc[0]["prompt"], str) and isinstance(pc[0]["completion"], str)
    saved = load_from_disk(str(tmp_path / "hf" / "dpo"))
    assert saved["train"].num_rows == 6 and saved["train"][0]["prompt"] == rows[0]["prompt"]
    assert Run(run.path).stage_info("export")["status"] == "complete"
    # pushing needs the network: offline it is refused before anything is written
    before = snapshot_dir(run.path / "exports")
    result = prefab("export", "--run", run.path, "--test-share", "0.5", "--push-to-hub", "me/prefs")
    assert result.exit_code != 0 and "HF_HUB_OFFLINE" in result.output and snapshot_dir(run.path / "exports") == before


def test_empty_export_fails_clearly_and_keeps_the_previous_files(labeled_run, prefab):
    run, *_ = labeled_run
    assert prefab("export", "--run", run.path, "--source", "human").exit_code == 0  # the 2 usable human pairs
    before = snapshot_dir(run.path / "exports")
    run.write("labels", run.read("labels").clear())  # no labels any more: nothing human to export
    result = prefab("export", "--run", run.path, "--source", "human")
    assert result.exit_code != 0 and "nothing to export" in result.output and "awaiting_labels=4" in result.output
    assert "Traceback" not in result.output and "hint:" in result.output
    assert snapshot_dir(run.path / "exports") == before


def test_pair_with_equal_sides_is_an_error_unless_dropped(labeled_run, prefab):
    run, _, pairs, human = labeled_run
    export(run, ExportConfig())
    before = snapshot_dir(run.path / "exports")
    auto = pairs.filter(pl.col("route") == "auto").row(0, named=True)
    candidates = run.read("candidates")
    chosen_text = candidates.filter(pl.col("candidate_id") == auto["chosen_id"])["text"][0]
    run.write(
        "candidates",
        candidates.with_columns(
            text=pl.when(pl.col("candidate_id") == auto["rejected_id"])
            .then(pl.lit(chosen_text))
            .otherwise(pl.col("text"))
        ),
    )
    result = prefab("export", "--run", run.path)
    assert result.exit_code != 0 and auto["pair_id"] in result.output and "same text" in result.output
    assert "--drop-equal" in result.output or "drop_equal" in result.output
    assert snapshot_dir(run.path / "exports") == before
    result = prefab("export", "--run", run.path, "--drop-equal")
    assert result.exit_code == 0, result.output
    assert (
        auto["pair_id"]
        not in (run.path / "exports" / "dpo_train.jsonl").read_text()
        + (run.path / "exports" / "dpo_test.jsonl").read_text()
    )


def test_missing_table_and_failed_candidate(tmp_path, prefab):
    run, _ = make_run(tmp_path / "run", n_pairs=4, human_every=100)
    result = prefab("export", "--run", tmp_path / "nowhere")
    assert result.exit_code != 0 and "does not exist" in result.output
    candidates = run.read("candidates")
    failed = run.read("pairs").filter(pl.col("route") == "auto")["rejected_id"][0]
    run.write(
        "candidates",
        candidates.with_columns(text=pl.when(pl.col("candidate_id") == failed).then(None).otherwise(pl.col("text"))),
    )
    result = prefab("export", "--run", run.path)
    assert result.exit_code != 0 and "has no text" in result.output and "--retry-failed" in result.output
    assert not (run.path / "exports").exists()
    run.table_path("pairs").unlink()
    result = prefab("export", "--run", run.path)
    assert result.exit_code != 0 and "pairs.parquet does not exist" in result.output


def test_no_file_with_an_invalid_line_is_written(labeled_run):
    """A prompt ending in an assistant turn is no valid preference prompt: the export stops before writing."""
    run, *_ = labeled_run
    rows = run.read("prompts").to_dicts()
    rows[1]["messages"] = rows[1]["messages"] + [{"role": "assistant", "content": "an earlier answer"}]
    run.write("prompts", pl.DataFrame(rows, schema=TABLES["prompts"]))
    with pytest.raises(ExportError, match="must end with a user message"):
        export(run, ExportConfig(test_share=0.0))
    assert not (run.path / "exports").exists() or not any((run.path / "exports").iterdir())


@pytest.mark.parametrize("emptied", ["pairs", "labels"])
def test_nothing_to_export_fails_before_loading_the_tokenizer(labeled_run, prefab, monkeypatch, emptied):
    """Loading the tokenizer takes most of an export's time and memory: an export with nothing to write stops first."""
    import training.export.stage

    run, *_ = labeled_run
    run.write(emptied, run.read(emptied).clear())

    def no_tokenizer(name):
        raise AssertionError("the tokenizer was loaded for an export with nothing to write")

    monkeypatch.setattr(training.export.stage, "load_tokenizer", no_tokenizer)
    result = prefab("export", "--run", run.path, "--source", "human")
    assert result.exit_code == 2 and "nothing to export" in result.output, result.output
    reason, fix = (
        ("the run has no pairs", "prefab pair") if emptied == "pairs" else ("awaiting_labels=4", "prefab push/pull")
    )
    assert reason in result.output and fix in result.output
