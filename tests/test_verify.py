"""Verified math: math-verify's verdicts on answers in several notations (right, wrong, unparseable), reference
answers through ingest, a reference that does not parse, timeouts in and outside the main thread, resume after a
kill, and a whole run on the in-process fake backend in which verified pairs are routed `auto` with reason
`verified` against the judge's opinion, skip the pairwise judge and reach the export."""

import json
import threading

import polars as pl
import pytest

from pipeline.core.config import VerifyConfig, config_model
from pipeline.core.errors import InputError
from pipeline.core.runner import run_pipeline
from pipeline.core.store import Run, prompt_id
from pipeline.stages import verify
from pipeline.stages.ingest import ingest

# math-verify's limits set and cancel SIGALRM's timer, which pytest-timeout's default (signal) method also uses:
# a watchdog thread keeps these tests under the suite's time limit
pytestmark = pytest.mark.timeout(900, method="thread")

# ---------------------------------------------------------------- math-verify's verdicts


@pytest.mark.parametrize(
    "reference, response, status, answer",
    [
        ("42", "6 × 7 = 42, so the answer is 42.", "correct", "42"),
        ("42", "First 40, then 41, and finally $\\boxed{42}$.", "correct", "42"),
        ("42", "The answer is 41.", "incorrect", "41"),
        ("-9", "x = -9", "correct", "-9"),
        ("1/2", "It comes to 0.5.", "correct", "0.5"),
        ("1/2", "It comes to $\\frac{2}{4}$.", "correct", "\\frac{2}{4}"),
        ("$\\frac{7}{12}$", "1/3 + 1/4 = 7/12", "correct", "7/12"),
        ("$\\frac{7}{12}$", "1/3 + 1/4 = 2/7", "incorrect", "2/7"),
        ("0.6", "The share is $\\frac{3}{5}$.", "correct", "\\frac{3}{5}"),
        ("17.50", "14 pens cost $17.5 in total.", "correct", "17.5"),
        ("3.375", "The volume is 3.38.", "incorrect", "3.38"),
        ("$x = 8$", "So x is $8$.", "correct", "8"),
        ("$\\{2, 3\\}$", "The solutions are $\\{3, 2\\}$.", "correct", "\\{3, 2\\}"),
        ("$\\{2, 3\\}$", "The solutions are $\\{2, -3\\}$.", "incorrect", "\\{2, -3\\}"),
        ("$(-\\infty, 6)$", "In interval notation: $(-\\infty, 6)$", "correct", "(-\\infty, 6)"),
        ("$(-\\infty, 6)$", "In interval notation: $(-\\infty, 6]$", "incorrect", "(-\\infty, 6]"),
        ("$2\\sqrt{2}$", "The diagonal is $\\sqrt{8}$.", "correct", "\\sqrt{8}"),
        ("$9\\pi$", "The area is $3\\pi$.", "incorrect", "3\\pi"),
        ("$x^2 - 3x - 10$", "Expanding gives $\\boxed{x^2 - 3x - 10}$.", "correct", "x^2 - 3x - 10"),
        ("42", "I am not sure how to solve this.", "unparseable", None),
        ("42", "", "unparseable", None),
    ],
)
def test_math_verify_scores_answers_in_several_notations(reference, response, status, answer):
    [result] = verify.check_many([(reference, response)], timeout_s=5, float_rounding=6)
    assert (result["status"], result["answer"], result["error"]) == (status, answer, None)
    assert result["reference"] is not None


@pytest.mark.parametrize("reference", ["forty-two", "$\\frac{1}{$", "x^2+1"])
def test_a_reference_that_does_not_parse_is_an_error_on_the_row_not_a_crash(reference):
    results = verify.check_many(
        [(reference, "The answer is 42."), ("42", "The answer is 42.")], timeout_s=5, float_rounding=6
    )
    assert results[0]["status"] == "error" and results[0]["reference"] is None and results[0]["answer"] is None
    assert (
        repr(reference) in results[0]["error"]
        and "does not parse as math" in results[0]["error"]
        and "$...$" in results[0]["error"]
    )
    assert results[1]["status"] == "correct"  # the next row is checked as usual


HUGE = ("$9^{9^{9^{9}}}$", "The answer is $9^{9^{9^{8}}}$.")  # sympy cannot settle this comparison in a second


def test_a_check_that_runs_over_its_limit_is_an_error_never_incorrect():
    [result] = verify.check_many([HUGE], timeout_s=1, float_rounding=6)
    assert result["status"] == "error" and "took over 1 s" in result["error"]


def test_off_the_main_thread_checks_still_run_with_their_time_limit():
    """math-verify's SIGALRM limit raises a ValueError outside the main thread;
    the stage runs the checks in a child process."""
    prompts = pl.DataFrame({"prompt_id": ["p1", "p2"], "reference_answer": ["1/2", HUGE[0]]})
    candidates = pl.DataFrame(
        {"candidate_id": ["a", "b", "c"], "prompt_id": ["p1", "p1", "p2"], "text": ["It is 0.5", "It is 0.4", HUGE[1]]}
    )
    out = {}
    thread = threading.Thread(
        target=lambda: out.update(table=verify.verify_candidates(prompts, candidates, VerifyConfig(timeout_s=1)))
    )
    thread.start()
    thread.join(120)
    table = out["table"]
    assert table["status"].to_list() == ["correct", "incorrect", "error"]
    assert "took over 1 s" in table["error"][2]


def test_every_reference_in_the_math_prompts_parses_and_checks_both_ways():
    rows = [json.loads(line) for line in open("data/prompts/math.jsonl", encoding="utf-8")]
    assert len(rows) >= 60 and len({r["prompt"] for r in rows}) == len(rows)
    items = []
    for r in rows:
        items += [
            (r["answer"], f"Let me work it out. The final answer is $\\boxed{{{r['answer'].strip('$')}}}$."),
            (r["answer"], "The final answer is $\\boxed{123457}$."),
        ]
    results = verify.check_many(items, timeout_s=5, float_rounding=6)
    assert [r["status"] for r in results] == ["correct", "incorrect"] * len(rows)


# ---------------------------------------------------------------- reference answers through ingest


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_ingest_reads_reference_answers_from_a_mapped_column(tmp_path, prefab):
    src = write_jsonl(
        tmp_path / "m.jsonl",
        [
            {"prompt": "2+2?", "answer": 4},
            {"prompt": "Half of 1?", "answer": "$\\frac{1}{2}$"},
            {"prompt": "Say hi."},
            {"prompt": "0.1 + 0.2?", "answer": 0.3},
            {"prompt": "Blank?", "answer": " "},
        ],
    )
    assert prefab("ingest", "--run", tmp_path / "run", src).exit_code == 0
    prompts = Run(tmp_path / "run").read("prompts")
    assert prompts["reference_answer"].to_list() == ["4", "$\\frac{1}{2}$", None, "0.3", None]
    assert Run(tmp_path / "run").stage_info("ingest")["with_reference_answer"] == 3
    pl.DataFrame({"question": ["3*3?"], "solution_value": ["9"], "answer": ["not this one"]}).write_csv(
        tmp_path / "m.csv"
    )
    assert (
        prefab("ingest", "--run", tmp_path / "csv", tmp_path / "m.csv", "--answer-column", "solution_value").exit_code
        == 0
    )
    assert Run(tmp_path / "csv").read("prompts")["reference_answer"].to_list() == ["9"]


def test_a_reference_answer_of_the_wrong_type_is_a_bad_row_with_file_and_line(tmp_path):
    src = write_jsonl(tmp_path / "m.jsonl", [{"prompt": "ok?", "answer": "1"}, {"prompt": "Roots?", "answer": [2, 3]}])
    cfg = config_model().model_validate({"run": "r", "ingest": {"paths": [str(src)]}}).ingest
    with pytest.raises(InputError) as e:
        ingest(cfg)
    assert e.value.where == f"{src}:2" and "answer" in e.value.message and "LaTeX" in e.value.message


def test_a_prompts_table_from_before_reference_answers_and_tests_still_reads(tmp_path):
    run = Run(tmp_path / "run")
    old = pl.DataFrame(
        {
            "prompt_id": ["p"],
            "messages": [[{"role": "user", "content": "hi"}]],
            "source": ["s"],
            "source_line": [1],
            "category": [None],
            "duplicate_of": [None],
            "cluster": [None],
            "excluded_reason": [None],
        },
        schema={
            k: v
            for k, v in __import__("pipeline.core.schema").core.schema.TABLES["prompts"].items()
            if k not in ("reference_answer", "tests")
        },
    )
    run.path.mkdir()
    old.write_parquet(run.table_path("prompts"))
    assert run.read("prompts").select("reference_answer", "tests").row(0) == (None, None)


# ---------------------------------------------------------------- a whole run on the fake backend

PROBLEMS = {  # prompt -> (reference, a right response, a wrong response)
    "What is 17 × 23?": ("391", "17 × 23 = 391.", "17 × 23 = 401."),
    "Add 1/3 and 1/4.": ("$\\frac{7}{12}$", "The sum is $\\frac{7}{12}$.", "The sum is $\\frac{2}{7}$."),
    "Solve x^2 - 5x + 6 = 0 as a set.": (
        "$\\{2, 3\\}$",
        "The roots are $\\{3, 2\\}$.",
        "The roots are $\\{-2, -3\\}$.",
    ),
    "Write 7/8 as a decimal.": ("0.875", "7/8 = 0.875", "I would rather not say."),
}
NO_REFERENCE = "Describe a triangle."
BAD_REFERENCE = "What is the answer to everything?"
BOTH_WRONG = (
    "What is 10 - 4?",
    "6",
    "4",
    "2",
)  # prompt, reference, and two wrong answers: no pair of them can teach anything


def math_run(tmp_path, fake_backend, mode="prefer", both_wrong=False, **sections):
    tmp_path.mkdir(parents=True, exist_ok=True)
    rows = [{"prompt": p, "answer": ref} for p, (ref, _, _) in PROBLEMS.items()]
    rows += [{"prompt": NO_REFERENCE}, {"prompt": BAD_REFERENCE, "answer": "forty-two"}]
    rows += [{"prompt": BOTH_WRONG[0], "answer": BOTH_WRONG[1]}] if both_wrong else []
    src = write_jsonl(tmp_path / "math.jsonl", rows)
    texts = {p: (right, wrong) for p, (_, right, wrong) in PROBLEMS.items()}
    texts |= {BOTH_WRONG[0]: BOTH_WRONG[2:]} if both_wrong else {}
    texts |= {NO_REFERENCE: ("It has three sides.", "It has four sides."), BAD_REFERENCE: ("42", "41")}
    wrong = {w for _, w in texts.values()}

    def respond(body):
        content = body["messages"][-1]["content"]
        if body["model"] == "gen-model":  # sample 0 (seed 0) answers right, sample 1 wrong
            return texts[content][body["seed"]]
        if (
            "## Response to rate" in content
        ):  # a judge that rates every second sample (the wrong answers) 5, the others 1
            response = content.split("## Response to rate\n\n", 1)[1]
            return json.dumps({"helpfulness": {"rationale": "r", "score": 5 if response in wrong else 1}})
        return json.dumps({"rationale": "r", "winner": "A"})  # pairwise: always the first shown, so inconsistent

    fake_backend.respond = respond
    judge = {
        "judges": [{"name": "j", "backend": "fake", "model": "judge-model"}],
        "aspects": [{"name": "helpfulness"}],
        "parse_retries": 0,
    }
    config = config_model().model_validate(
        {
            "run": str(tmp_path / "run"),
            "ingest": {"paths": [str(src)]},
            "generate": {
                "generators": [{"name": "gen", "backend": "fake", "model": "gen-model", "temperatures": [0.7], "n": 2}]
            },
            "judge": judge,
            "verify": {"mode": mode},
            "pair": {},
            "route": {"audit_share": 0, "margin_threshold": 1.0},
            "export": {"test_share": 0, "formats": ["trl-dpo"], "min_margin": 2.0},
            **sections,
        }
    )
    run = Run(config.run)
    return run, config, texts


def chosen_rejected(run, pairs):
    text = dict(run.read("candidates").select("candidate_id", "text").iter_rows())
    return {(text[c], text[r]) for c, r in pairs.select("chosen_id", "rejected_id").iter_rows()}


def test_a_run_routes_verified_pairs_auto_against_the_judge_and_exports_them(tmp_path, fake_backend):
    run, config, texts = math_run(tmp_path, fake_backend)
    run_pipeline(config, run)

    checks = run.read("verifications").join(run.read("candidates").select("candidate_id", "text"), on="candidate_id")
    status = dict(checks.select("text", "status").iter_rows())
    for _ref, right, _wrong in PROBLEMS.values():
        assert status[right] == "correct"
    assert [status[w] for _, _, w in PROBLEMS.values()] == ["incorrect", "incorrect", "incorrect", "unparseable"]
    assert not set(texts[NO_REFERENCE]) & set(status)  # not checked: no reference
    assert {status[t] for t in texts[BAD_REFERENCE]} == {"error"}
    assert run.stage_info("verify")["bad_references"] == 1 and run.stage_info("verify")["correct"] == 4

    pairs = run.read("pairs")
    verified = pairs.filter(pl.col("strategy") == "verified")
    # the judge scored every wrong answer 5 and every right one 1; the verifier decides these pairs anyway
    assert chosen_rejected(run, verified) == {(right, wrong) for _, right, wrong in PROBLEMS.values()}
    assert verified["route"].to_list() == ["auto"] * 4 and verified["route_reason"].to_list() == ["verified"] * 4
    assert verified["confidence"].to_list() == [1.0] * 4 and verified["margin"].to_list() == [-4.0] * 4
    # the others are the judge's: the prompt without a reference and the one whose reference does not parse
    judged = pairs.filter(pl.col("strategy") != "verified")
    assert chosen_rejected(run, judged) == {(texts[p][1], texts[p][0]) for p in (NO_REFERENCE, BAD_REFERENCE)}
    assert set(judged["route"].to_list()) == {"human"}  # this judge's pairwise verdicts contradict its scores
    # the pairwise judge was asked about the two judged pairs only (both orders), never about a verified one
    pairwise = [r for r in fake_backend.requests if "## Response A" in r.messages[-1]["content"]]
    assert len(pairwise) == 4 and not any(
        w in r.messages[-1]["content"] for r in pairwise for _, _, w in PROBLEMS.values()
    )
    assert run.stage_info("route")["reason_verified"] == 4

    from labeling.push import to_push
    from labeling.settings import LabelingConfig

    for routes in (
        ["human"],
        ["human", "auto"],
    ):  # nobody is asked about a verified pair, even when auto pairs are pushed
        assert set(to_push(pairs, LabelingConfig(routes=routes))["pair_id"]) == set(judged["pair_id"])

    exported = [json.loads(line) for line in open(run.path / "exports" / "dpo_train.jsonl")]
    got = {(e["chosen"][-1]["content"], e["rejected"][-1]["content"]) for e in exported}
    # their judge margin is -4, below export.min_margin (2): that filter is for the judge's pairs, not for verified ones
    assert got == {(right, wrong) for _, right, wrong in PROBLEMS.values()}
    card = (run.path / "exports" / "README.md").read_text()
    assert "verified (4 pairs)" in card


def test_a_pair_of_two_wrong_answers_reaches_neither_people_nor_the_export(tmp_path, fake_backend):
    route = {"audit_share": 0, "margin_threshold": 1.0, "human_budget": 2}
    run, config, texts = math_run(tmp_path, fake_backend, both_wrong=True, route=route)
    run_pipeline(config, run)

    pairs = run.read("pairs")
    dropped = pairs.filter(pl.col("route") == "dropped")
    # the judge prefers "2" to "4" by 4 points and its pairwise verdicts flip, so it would have gone to people
    assert chosen_rejected(run, dropped) == {("2", "4")} and dropped["route_reason"].to_list() == ["both_incorrect"]
    verified = pairs.filter(pl.col("strategy") == "verified")  # a right against a wrong answer: still verified, auto
    assert chosen_rejected(run, verified) == {(right, wrong) for _, right, wrong in PROBLEMS.values()}
    assert set(verified["route"]) == {"auto"} and set(verified["route_reason"]) == {"verified"}
    # the budget of 2 goes whole to the pairs people can decide; none is pushed over it
    human = pairs.filter(pl.col("route") == "human")
    assert chosen_rejected(run, human) == {(texts[p][1], texts[p][0]) for p in (NO_REFERENCE, BAD_REFERENCE)}
    assert not pairs["route_reason"].str.starts_with("over_budget").any()
    info = run.stage_info("route")
    assert (info["human"], info["auto"], info["dropped"], info["reason_both_incorrect"]) == (2, 4, 1, 1)
    pairwise = [r for r in fake_backend.requests if "## Response A" in r.messages[-1]["content"]]
    assert len(pairwise) == 4 and not any(
        BOTH_WRONG[0] in r.messages[-1]["content"] for r in pairwise
    )  # no judge call for it

    from labeling.push import to_push
    from labeling.settings import LabelingConfig

    for routes in (["human"], ["human", "auto"]):
        assert set(to_push(pairs, LabelingConfig(routes=routes))["pair_id"]) == set(human["pair_id"])
    assert run.stage_info("export")["dropped"] == {"both_incorrect": 1, "awaiting_labels": 2}
    exported = [json.loads(line) for line in open(run.path / "exports" / "dpo_train.jsonl")]
    assert {(e["chosen"][-1]["content"], e["rejected"][-1]["content"]) for e in exported} == {
        (right, wrong) for _, right, wrong in PROBLEMS.values()
    }
    assert "dropped: both_incorrect | 1" in (run.path / "exports" / "README.md").read_text()


def test_mode_only_pairs_verified_prompts_alone_without_a_judge(tmp_path, fake_backend):
    run, config, _ = math_run(
        tmp_path,
        fake_backend,
        mode="only",
        judge=None,
        stages=["ingest", "generate", "verify", "pair", "route", "report"],
    )
    run_pipeline(config, run)
    pairs = run.read("pairs")
    assert pairs.height == 4 and set(pairs["strategy"]) == {"verified"} and set(pairs["route_reason"]) == {"verified"}
    assert pairs["margin"].null_count() == 4  # no judge scored them: the report draws its margins without them
    report = (run.path / "report.html").read_text()
    assert "this section failed" not in report and "verified" in report
    assert not any(r.messages[-1]["content"].startswith("##") for r in fake_backend.requests)


def test_pair_before_verify_says_to_run_verify(tmp_path, fake_backend):
    from pipeline.core.errors import RunError
    from pipeline.stages import pair

    run, config, _ = math_run(tmp_path, fake_backend)
    run_pipeline(config, run, until="judge")
    with pytest.raises(RunError, match="the run has no verifications") as e:
        pair.step(config, run)
    assert "prefab verify --run" in e.value.hint and not run.has("pairs")


def test_mode_off_records_the_checks_and_lets_the_judge_pair(tmp_path, fake_backend):
    run, config, _ = math_run(tmp_path, fake_backend, mode="off")
    run_pipeline(config, run, until="pair")
    assert run.read("verifications").height == 10
    pairs = run.read("pairs")
    assert "verified" not in pairs["strategy"].to_list()
    assert chosen_rejected(run, pairs) >= {
        (wrong, right) for _, right, wrong in PROBLEMS.values()
    }  # the judge's (wrong) choice


# ---------------------------------------------------------------- resume


def test_a_killed_verify_resumes_where_it_stopped_and_reuses_what_still_matches(tmp_path, fake_backend, monkeypatch):
    run, config, _ = math_run(tmp_path, fake_backend)
    run_pipeline(config, run, until="generate")
    real = verify.check_many
    checked = []

    def counting(items, *args):
        if len(checked) >= 4:
            raise KeyboardInterrupt  # killed after two chunks
        checked.extend(items)
        return real(items, *args)

    monkeypatch.setattr(verify, "CHUNK", 2)
    monkeypatch.setattr(verify, "check_many", counting)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config, run, start="verify", until="verify")
    assert run.read("verifications").height == 4  # written after each chunk
    assert run.stage_info("verify")["status"] == "failed"

    checked.clear()
    monkeypatch.setattr(verify, "check_many", lambda items, *args: checked.extend(items) or real(items, *args))
    run_pipeline(config, run, start="verify", until="verify")
    assert len(checked) == 6 and run.stage_info("verify")["reused"] == 4
    resumed = run.read("verifications").sort("candidate_id")

    fresh_run, fresh_config, _ = math_run(tmp_path / "fresh", fake_backend)
    run_pipeline(fresh_config, fresh_run, until="verify")
    assert resumed.equals(fresh_run.read("verifications").sort("candidate_id"))

    checked.clear()
    run_pipeline(config, run, start="verify", until="verify")
    assert checked == [] and run.stage_info("verify")["reused"] == 10

    # a corrected reference answer: only that prompt's candidates are checked again
    prompts = run.read("prompts")
    fixed = prompts.with_columns(
        pl.when(pl.col("reference_answer") == "forty-two")
        .then(pl.lit("42"))
        .otherwise(pl.col("reference_answer"))
        .alias("reference_answer")
    )
    run.write("prompts", fixed)
    run_pipeline(config, run, start="verify", until="verify")
    assert sorted(text for _, text in checked) == ["41", "42"]
    bad = run.read("verifications").filter(
        pl.col("prompt_id") == prompt_id([{"role": "user", "content": BAD_REFERENCE}])
    )
    assert sorted(bad["status"].to_list()) == ["correct", "incorrect"]


# ---------------------------------------------------------------- verified code (sandbox: pipeline/sandbox/bwrap.py)

TASKS = {  # prompt -> (tests, right code, wrong code)
    "Write `add(a, b)`.": (
        "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n",
        "Here it is:\n```python\ndef add(a, b):\n    return a + b\n```\nDone.",
        "```python\ndef add(a, b):\n    return abs(a) + b\n```",
    ),
    "Write `square(x)`.": (
        "def test_small():\n    assert square(3) == 9\n\ndef test_negative():\n    assert square(-2) == 4\n",
        "def square(x):\n    return x * x\n",
        "```python\ndef square(x):\n    while True:\n        pass\n```",
    ),
}


@pytest.fixture(scope="module")
def sandbox_available():
    """Skip only where a probe of its own proves the machine cannot isolate code; any other SandboxError fails."""
    from sandbox_probe import isolation_refused

    if reason := isolation_refused():
        pytest.skip(reason)


def test_the_code_is_the_first_fenced_block_else_the_whole_text():
    assert (
        verify.extract_code("Sure:\n```python\ndef f():\n    return 1\n```\nand\n```python\nx = 2\n```")
        == "def f():\n    return 1\n"
    )
    assert verify.extract_code("```\nprint(1)\n```") == "print(1)\n"
    assert verify.extract_code("```py\ndef f(): pass") == "def f(): pass"  # cut off by max_tokens
    assert verify.extract_code("def f():\n    return 1") == "def f():\n    return 1"


def test_tests_are_read_and_checked_at_ingest(tmp_path):
    from pipeline.core.config import IngestConfig

    src = write_jsonl(
        tmp_path / "code.jsonl",
        [
            {"prompt": "Write f.", "tests": "assert f() == 1\n"},
            {"prompt": "Write g.", "tests": ["assert g(1) == 2", "assert g(2) == 3"]},  # a list of assert lines
            {"prompt": "Write h.", "tests": "assert h( == 1"},  # does not compile
            {"prompt": "Write k.", "tests": "x = 1"},  # holds no test
            {"prompt": "Write m.", "test_code": 7},
        ],
    )
    prompts, bad, counts = ingest(IngestConfig(paths=[str(src)], skip_bad_rows=True))
    assert (
        prompts["tests"].to_list() == ["assert f() == 1\n", "assert g(1) == 2\nassert g(2) == 3"]
        and counts["with_tests"] == 2
    )
    assert bad.select("source_line", "field").rows() == [(3, "tests"), (4, "tests"), (5, "test_code")]
    assert "do not compile" in bad["error"][0] and "no assert" in bad["error"][1] and "Python text" in bad["error"][2]
    with pytest.raises(InputError, match=r"code.jsonl:3.*tests"):
        ingest(IngestConfig(paths=[str(src)]))


def test_a_run_pairs_code_that_passes_its_tests_against_code_that_does_not(tmp_path, fake_backend, sandbox_available):
    src = write_jsonl(tmp_path / "code.jsonl", [{"prompt": p, "tests": t} for p, (t, _, _) in TASKS.items()])
    texts = {p: (right, wrong) for p, (_, right, wrong) in TASKS.items()}
    fake_backend.respond = lambda body: texts[body["messages"][-1]["content"]][body["seed"]]
    config = config_model().model_validate(
        {
            "run": str(tmp_path / "run"),
            "ingest": {"paths": [str(src)]},
            "generate": {
                "generators": [{"name": "gen", "backend": "fake", "model": "gen-model", "temperatures": [0.7], "n": 2}]
            },
            "verify": {"mode": "only", "code_wall_s": 3, "code_cpu_s": 2},
            "pair": {},
            "route": {},
            "export": {"test_share": 0, "formats": ["trl-dpo"]},
        }
    )
    run = Run(config.run)
    run_pipeline(config, run)

    checks = run.read("verifications").join(run.read("candidates").select("candidate_id", "text"), on="candidate_id")
    by_text = {row["text"]: row for row in checks.iter_rows(named=True)}
    assert {by_text[right]["status"] for right, _ in texts.values()} == {"correct"}
    assert [by_text[right]["score"] for right, _ in texts.values()] == [1.0, 1.0]
    add_wrong, square_wrong = by_text[texts["Write `add(a, b)`."][1]], by_text[texts["Write `square(x)`."][1]]
    assert (add_wrong["status"], add_wrong["score"]) == ("incorrect", 0.5) and add_wrong["error"].startswith(
        "failed"
    )  # one test of two
    assert square_wrong["status"] == "incorrect" and square_wrong["error"].split(":")[0] in (
        "timeout",
        "cpu_time",
    )  # a hostile loop ends as a failed candidate
    assert set(checks["verifier"]) == {"code"} and run.stage_info("verify")["code_runs"] == 4

    pairs = run.read("pairs")
    assert chosen_rejected(run, pairs) == {(right, wrong) for right, wrong in texts.values()}
    assert set(pairs["route_reason"]) == {"verified"}
    exported = [json.loads(line) for line in (run.path / "exports" / "dpo_train.jsonl").read_text().splitlines()]
    assert len(exported) == 2
    from training.export.stage import export
    from training.settings import ExportConfig

    export(run, ExportConfig(formats=["grpo"], test_share=0, out_dir=str(tmp_path / "grpo")))
    prompt_set = [json.loads(line) for line in (tmp_path / "grpo" / "grpo_train.jsonl").read_text().splitlines()]
    assert sorted(r["tests"] for r in prompt_set) == sorted(t for t, _, _ in TASKS.values()) and {
        r["reference_answer"] for r in prompt_set
    } == {None}

    # resumed: nothing is run again while the tests and texts are the same
    from pipeline.sandbox import bwrap as sandbox

    calls = []
    original = sandbox.run_many
    sandbox.run_many = lambda jobs, **kw: calls.append(jobs) or original(jobs, **kw)
    try:
        run_pipeline(config, run, start="verify", until="verify")
    finally:
        sandbox.run_many = original
    assert calls == [] and run.stage_info("verify")["reused"] == 4
