"""Ingest: formats, chats, column mapping, duplicates, and bad rows reported with file and line."""

import json
from pathlib import Path

import polars as pl
import pytest
from conftest import snapshot_dir

from pipeline.core.store import Run


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_sample_prompts_ingest(tmp_path, prefab):
    result = prefab("ingest", "--run", tmp_path / "run", "data/prompts/single_turn.jsonl", "data/prompts/chats.jsonl")
    assert result.exit_code == 0, result.output
    prompts = Run(tmp_path / "run").read("prompts")
    assert prompts.height >= 200
    assert prompts["prompt_id"].is_unique().all()
    chats = prompts.filter(pl.col("messages").list.len() > 1)
    assert chats.height >= 30
    roles = chats["messages"].to_list()[0]
    assert roles[-1]["role"] == "user"
    assert set(prompts["category"].drop_nulls()) >= {
        "coding",
        "math",
        "writing",
        "advice",
        "facts",
        "reasoning",
        "safety",
    }


def test_formats_and_duplicates(tmp_path, prefab):
    rows = [
        {"instruction": "Name a prime.", "topic": "math"},
        {"instruction": "  Name   a prime. "},
        {"instruction": "Say hi."},
    ]
    write_jsonl(tmp_path / "a.jsonl", rows)
    pl.DataFrame({"question": ["What is DPO?", "Say hi."]}).write_csv(tmp_path / "b.csv")
    pl.DataFrame(
        {
            "conversation": [
                [
                    {"from": "human", "value": "Hello"},
                    {"from": "gpt", "value": "Hi!"},
                    {"from": "human", "value": "Tell me a joke"},
                ]
            ]
        }
    ).write_parquet(tmp_path / "c.parquet")
    result = prefab(
        "ingest",
        "--run",
        tmp_path / "run",
        tmp_path / "a.jsonl",
        tmp_path / "b.csv",
        tmp_path / "c.parquet",
        "--system-prompt",
        "Be brief.",
    )
    assert result.exit_code == 0, result.output
    run = Run(tmp_path / "run")
    prompts = run.read("prompts")
    assert prompts.height == 4  # the whitespace variant and the CSV "Say hi." are exact duplicates
    assert run.manifest()["stages"]["ingest"]["exact_duplicates_dropped"] == 2
    first = prompts.row(0, named=True)
    assert first["messages"][0] == {"role": "system", "content": "Be brief."}
    assert first["category"] == "math" and first["source_line"] == 1
    chat = prompts.filter(pl.col("source").str.ends_with("c.parquet"))["messages"][0].to_list()
    assert [m["role"] for m in chat] == ["system", "user", "assistant", "user"]


def test_saved_hf_dataset(tmp_path, prefab):
    import datasets

    datasets.Dataset.from_dict({"prompt": ["One", "Two"]}).save_to_disk(tmp_path / "ds")
    assert prefab("ingest", "--run", tmp_path / "run", tmp_path / "ds").exit_code == 0
    assert Run(tmp_path / "run").read("prompts").height == 2


@pytest.mark.parametrize(
    "content, where, message",
    [
        (b'{"prompt": "ok"}\n{"prompt": "broken"\n', ":2", "malformed JSON"),
        (b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n', ":2", "invalid UTF-8"),
        (b'{"prompt": "ok"}\n{"prompt": "   "}\n', ":2", "empty prompt"),
        (
            b'{"prompt": "ok"}\n{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}\n',
            ":2",
            "invalid role order",
        ),
        (
            b'{"prompt": "ok"}\n'
            b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n',
            ":2",
            "end with a user turn",
        ),
        (b'{"prompt": "ok"}\n{"body": "no prompt column"}\n', ":2", "no prompt column"),
    ],
)
def test_bad_rows_named_and_run_untouched(tmp_path, prefab, content, where, message):
    good = write_jsonl(tmp_path / "good.jsonl", [{"prompt": "first"}])
    assert prefab("ingest", "--run", tmp_path / "run", good).exit_code == 0
    before = snapshot_dir(tmp_path / "run")
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(content)
    result = prefab("ingest", "--run", tmp_path / "run", bad)
    assert result.exit_code != 0
    assert f"bad.jsonl{where}" in result.output and message in result.output
    assert "Traceback" not in result.output
    assert snapshot_dir(tmp_path / "run") == before

    skipped = prefab("ingest", "--run", tmp_path / "other", bad, "--skip-bad-rows")
    assert skipped.exit_code == 0, skipped.output
    bad_rows = Run(tmp_path / "other").read("bad_rows")
    assert bad_rows.height == 1 and bad_rows["source_line"][0] == 2 and message in bad_rows["error"][0]


def test_missing_mapped_column(tmp_path, prefab):
    src = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "x"}])
    result = prefab("ingest", "--run", tmp_path / "run", src, "--prompt-column", "instruction")
    assert result.exit_code != 0 and "a.jsonl:1" in result.output and "instruction" in result.output


def test_missing_file(tmp_path, prefab):
    result = prefab("ingest", "--run", tmp_path / "run", tmp_path / "nope.jsonl")
    assert result.exit_code != 0 and "does not exist" in result.output
    assert not (tmp_path / "run").exists()


def test_byte_order_mark_json_array_and_multiline_csv_keep_their_lines(tmp_path, prefab):
    """A BOM (Excel, Notepad) is not part of the first record; a .json array is read record by record; a CSV
    row whose quoted field spans lines is named by the line it starts on."""
    bom = b"\xef\xbb\xbf"
    (tmp_path / "a.jsonl").write_bytes(bom + b'{"prompt": "From a BOM file."}\n{"prompt": "Second."}\n')
    (tmp_path / "b.csv").write_bytes(bom + b'prompt,category\n"Two\nlines.",poetry\nAfter it.,\n')
    (tmp_path / "c.json").write_text('[\n  {"prompt": "Array one."},\n\n  {"prompt": "Array\\ntwo."}\n]\n')
    (tmp_path / "d.tsv").write_text("prompt\tcategory\nTabs, and a comma.\tpunctuation\n")
    result = prefab(
        "ingest", "--run", tmp_path / "run", *(tmp_path / n for n in ("a.jsonl", "b.csv", "c.json", "d.tsv"))
    )
    assert result.exit_code == 0, result.output
    prompts = Run(tmp_path / "run").read("prompts")
    where = {
        (Path(s).name, line): (m[-1]["content"], c)
        for s, line, m, c in prompts.select("source", "source_line", "messages", "category").iter_rows()
    }
    assert where == {
        ("a.jsonl", 1): ("From a BOM file.", None),
        ("a.jsonl", 2): ("Second.", None),
        ("b.csv", 2): ("Two\nlines.", "poetry"),
        ("b.csv", 4): ("After it.", None),
        ("c.json", 2): ("Array one.", None),
        ("c.json", 4): ("Array\ntwo.", None),
        ("d.tsv", 2): ("Tabs, and a comma.", "punctuation"),
    }


def test_a_very_long_prompt_is_kept_with_a_warning(tmp_path, prefab):
    from pipeline.stages.ingest import LARGE_PROMPT_CHARS

    src = write_jsonl(
        tmp_path / "p.jsonl", [{"prompt": "Short."}, {"prompt": "x" * (LARGE_PROMPT_CHARS + 1)}, {"prompt": "Fine."}]
    )
    result = prefab("ingest", "--run", tmp_path / "run", src)
    assert result.exit_code == 0, result.output
    assert "warning: 1 prompt(s) longer than" in result.output and f"{src}:2" in result.output
    assert Run(tmp_path / "run").read("prompts").height == 3
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["ingest"]["large_prompts"] == 1
    quiet = prefab(
        "ingest", "--run", tmp_path / "run2", write_jsonl(tmp_path / "q.jsonl", [{"prompt": "x" * LARGE_PROMPT_CHARS}])
    )
    assert quiet.exit_code == 0 and "warning" not in quiet.output
