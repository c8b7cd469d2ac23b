"""Verify: each candidate's final answer checked against its prompt's reference answer (math-verify).

Hugging Face's math-verify: `parse` extracts an answer from text or LaTeX as sympy; `verify` compares two: numbers,
fractions, decimals, LaTeX, sets, intervals, equations. Exact and cheap, and no person or judge is needed for it.

One row per checked candidate in `verifications`: correct, incorrect, unparseable (no final answer found), or
error (the reference answer does not parse, or a check ran over `timeout_s`), with both extracted answers. A
prompt without a reference is skipped. A reference that does not parse is an error on each of its rows and a
warning naming its source line, never a crash. An error is never counted as incorrect: only correct and
incorrect (and, with `reject_unparseable`, unparseable) candidates make verified pairs (pipeline/stages/pair.py).

Code: a prompt with tests (Python asserts or test_* functions, checked to compile at ingest) has each candidate's
code (its first fenced block, else its whole text) run against them in the sandbox (pipeline/sandbox/bwrap.py: the code
is hostile input), `code_workers` at a time; correct when every test passes, else incorrect with the share passed
(`score`) and why (`error`: failed, timeout, memory, syntax_error...). A prompt with tests is not math-checked.
A machine that cannot isolate code stops the stage (SandboxError) before any verdict is recorded for it.

math-verify limits each parse and comparison with SIGALRM, which Python allows only in the main thread (it raises
a ValueError elsewhere, and turning the limit off would let one hostile answer hang the run). Called from any
other thread, the checks run in one child process, whose main thread it is.

Resumable: each row carries a key of the reference or tests, the candidate's text, the settings and the verifier's
version; a row whose key still matches is reused, and the table is rewritten (atomically) every CHUNK candidates, so
a killed stage picks up where it stopped.
"""

import importlib.metadata
import multiprocessing
import re
import threading
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager

import polars as pl

from pipeline.core.config import Config, VerifyConfig
from pipeline.core.progress import console, progress_bar, summary
from pipeline.core.queries import active_prompts
from pipeline.core.schema import TABLES
from pipeline.core.stage import Stage
from pipeline.core.store import Run, content_id
from pipeline.sandbox.bwrap import Limits, run_many

SANDBOX_VERSION = "1"  # part of a code check's key: bump when the sandbox's verdicts change
CHUNK = 256  # candidates checked between two writes of the table
STATUSES = ("correct", "incorrect", "unparseable", "error")
REFERENCE_HINT = "write it as a number, a fraction or LaTeX in $...$ (e.g. 3/4, $\\frac{3}{4}$, $\\{1, 2\\}$, $(1, 3]$)"


def parse_reference(reference: str, timeout_s: int) -> tuple[list | None, str | None]:
    """(parsed reference, None), or (None, what is wrong with it). No fallback to the raw string: a reference that
    math-verify cannot read as math would otherwise match only the same characters."""
    from math_verify import parse  # start-up: math_verify
    from math_verify.errors import TimeoutException  # start-up: math_verify

    try:
        parsed = parse(reference, fallback_mode="no_fallback", parsing_timeout=timeout_s, raise_on_error=True)
    except TimeoutException:
        return None, f"reading the reference answer {reference!r} took over {timeout_s} s"
    except Exception as e:  # noqa: BLE001 - math-verify raises what sympy and its LaTeX parser raise
        return None, f"the reference answer {reference!r} does not parse as math ({type(e).__name__}); {REFERENCE_HINT}"
    if not parsed:
        return None, f"the reference answer {reference!r} does not parse as math; {REFERENCE_HINT}"
    return parsed, None


def extraction() -> list:
    """Where a final answer is looked for in a response: \\boxed{} first, then "final answer is" and the like, then the
    last LaTeX or plain expression (math-verify's own extraction; we add no rules)."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig  # start-up: math_verify

    return [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]


def check(gold: list, text: str, timeout_s: int = 5, float_rounding: int = 6) -> dict:
    """One response against a parsed reference: {status, answer, error}."""
    from math_verify import parse, verify  # start-up: math_verify
    from math_verify.errors import TimeoutException  # start-up: math_verify

    try:
        answer = parse(text, extraction_config=extraction(), parsing_timeout=timeout_s, raise_on_error=True)
    except TimeoutException:
        return {"status": "error", "answer": None, "error": f"extracting the final answer took over {timeout_s} s"}
    except Exception as e:  # noqa: BLE001
        return {
            "status": "error",
            "answer": None,
            "error": f"math-verify could not read the response: {type(e).__name__}: {e}"[:300],
        }
    if not answer:
        return {"status": "unparseable", "answer": None, "error": None}
    shown = next(
        (a for a in reversed(answer) if isinstance(a, str)), None
    )  # the text it matched; str(sympy) can be slow
    try:
        ok = verify(gold, answer, float_rounding=float_rounding, timeout_seconds=timeout_s, raise_on_error=True)
    except TimeoutException:
        return {"status": "error", "answer": shown, "error": f"comparing with the reference took over {timeout_s} s"}
    except Exception as e:  # noqa: BLE001
        return {
            "status": "error",
            "answer": shown,
            "error": f"math-verify could not compare: {type(e).__name__}: {e}"[:300],
        }
    return {"status": "correct" if ok else "incorrect", "answer": shown, "error": None}


def check_many(items: list[tuple[str, str]], timeout_s: int, float_rounding: int) -> list[dict]:
    """(reference, text) -> {status, answer, reference, error, score}, each reference parsed once. Needs the main
    thread."""
    references: dict[str, tuple] = {}
    out = []
    for reference, text in items:
        if reference not in references:
            references[reference] = parse_reference(reference, timeout_s)
        gold, problem = references[reference]
        if gold is None:
            out.append({"status": "error", "answer": None, "reference": None, "error": problem, "score": None})
            continue
        result = check(gold, text, timeout_s, float_rounding)
        score = None if result["status"] == "error" else float(result["status"] == "correct")
        out.append({**result, "reference": str(gold[0])[:200], "score": score})
    return out


@contextmanager
def math_checker():
    """check_many where math-verify's SIGALRM limit holds: called directly on the main thread, in one child process
    (started at the first check, whose main thread it is) from any other."""
    if threading.current_thread() is threading.main_thread():
        yield check_many
        return
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield lambda *args: pool.submit(check_many, *args).result()


_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.S | re.I)


def extract_code(text: str) -> str:
    """The candidate's code: its first fenced block (```python, or an unclosed one cut by max_tokens), else the whole
    text."""
    found = _FENCE.search(text)
    return found.group(1) if found else text


def run_code(items: list[tuple[str, str]], cfg) -> list[dict]:
    """(tests, text) -> {status, answer, reference, error, score}: the code of each text against its tests in the
    sandbox."""
    limits = Limits(wall_s=cfg.code_wall_s, cpu_s=cfg.code_cpu_s, memory_mb=cfg.code_memory_mb)
    results = run_many([(extract_code(text), tests) for tests, text in items], workers=cfg.code_workers, limits=limits)
    return [
        {
            "status": "correct" if r.total and r.passed == r.total else "incorrect",
            "answer": None,
            "reference": None,
            "error": None if r.reason is None else f"{r.reason}: {r.detail}"[:300],
            "score": r.score,
        }
        for r in results
    ]


def check_key(verifier: str, truth: str, text: str, cfg, version: str) -> str:
    settings = (
        (cfg.timeout_s, cfg.float_rounding)
        if verifier == "math"
        else (cfg.code_wall_s, cfg.code_cpu_s, cfg.code_memory_mb)
    )
    return content_id("verify", verifier, version, truth, text, *settings)


def verify_candidates(
    prompts: pl.DataFrame, candidates: pl.DataFrame, cfg, previous: pl.DataFrame | None = None, save=None
) -> pl.DataFrame:
    """The verifications table for the candidates (with text) of prompts that have tests (code) or else a reference
    answer (math).

    previous: an earlier table, whose rows are reused while their key matches; save(table) is called after each
    CHUNK of new checks (the stage writes the table there, so a killed run resumes)."""
    prompts = prompts.with_columns(
        *(pl.lit(None, pl.String).alias(c) for c in ("reference_answer", "tests") if c not in prompts.columns)
    )
    truths = {
        p: ("code", tests) if tests is not None else ("math", ref)
        for p, ref, tests in prompts.select("prompt_id", "reference_answer", "tests").iter_rows()
        if tests is not None or ref is not None
    }
    todo = [
        (c, p, *truths[p], t)
        for c, p, t in candidates.select("candidate_id", "prompt_id", "text").iter_rows()
        if p in truths and t is not None
    ]
    kept = {}
    if previous is not None:
        kept = {(r["candidate_id"], r["check_key"]): r for r in previous.iter_rows(named=True)}
    versions = {"math": importlib.metadata.version("math-verify"), "code": SANDBOX_VERSION}
    rows: list[dict | None] = [None] * len(todo)
    missing = []
    for i, (c, _, verifier, truth, text) in enumerate(todo):
        key = check_key(verifier, truth, text, cfg, versions[verifier])
        if (c, key) in kept:
            rows[i] = kept[(c, key)]
        else:
            missing.append((i, key))

    def table() -> pl.DataFrame:
        return pl.DataFrame([r for r in rows if r is not None], schema=TABLES["verifications"], orient="row")

    with math_checker() as check_math, progress_bar("verify", len(missing)) as advance:
        for start in range(0, len(missing), CHUNK):
            chunk = missing[start : start + CHUNK]
            results = {}
            for verifier in ("math", "code"):
                mine = [(i, key) for i, key in chunk if todo[i][2] == verifier]
                if not mine:
                    continue
                items = [(todo[i][3], todo[i][4]) for i, _ in mine]
                found = (
                    run_code(items, cfg) if verifier == "code" else check_math(items, cfg.timeout_s, cfg.float_rounding)
                )
                results.update({i: (key, result) for (i, key), result in zip(mine, found, strict=True)})
            for i, (key, result) in results.items():
                c, p, verifier, _, _ = todo[i]
                rows[i] = {"candidate_id": c, "prompt_id": p, "verifier": verifier, **result, "check_key": key}
            advance(len(chunk))
            if save is not None and start + CHUNK < len(missing):
                save(table())
    return table()


def counts_of(table: pl.DataFrame, prompts: pl.DataFrame, candidates: pl.DataFrame, reused: int) -> dict:
    checkable = prompts.filter(pl.col("reference_answer").is_not_null() | pl.col("tests").is_not_null())
    status = dict(table["status"].value_counts().iter_rows()) if table.height else {}
    by_verifier = dict(table["verifier"].value_counts().iter_rows()) if table.height else {}
    bad = table.filter((pl.col("verifier") == "math") & (pl.col("status") == "error") & pl.col("reference").is_null())[
        "prompt_id"
    ].unique()
    checked = candidates.filter(pl.col("prompt_id").is_in(checkable["prompt_id"].implode()))
    return {
        "prompts_with_tests": prompts["tests"].drop_nulls().len(),
        "prompts_with_reference": prompts.filter(pl.col("tests").is_null())["reference_answer"].drop_nulls().len(),
        "candidates_checked": table.height,
        "math_checks": int(by_verifier.get("math", 0)),
        "code_runs": int(by_verifier.get("code", 0)),
        **{
            s if s != "error" else "errors": int(status.get(s, 0)) for s in STATUSES
        },  # the manifest has its own `error`
        "bad_references": bad.len(),
        "skipped_failed_candidates": int(checked["text"].null_count()),
        "reused": reused,
    }


def step(config: Config, run: Run, **_) -> dict:
    """Check every candidate of a prompt with tests or a reference answer; write `verifications` as it goes."""
    cfg = config.require(
        "verify", hint="add `verify: {}` (math answers checked with math-verify, code run against tests) to the config"
    )
    prompts = active_prompts(run.read("prompts"))
    candidates = run.read("candidates")
    previous = run.read("verifications") if run.has("verifications") else None
    table = verify_candidates(prompts, candidates, cfg, previous, save=lambda df: run.write("verifications", df))
    table = run.write("verifications", table)
    reused = (
        0
        if previous is None
        else table.join(previous.select("candidate_id", "check_key"), on=["candidate_id", "check_key"]).height
    )
    counts = counts_of(table, prompts, candidates, reused)
    if not counts["prompts_with_reference"] and not counts["prompts_with_tests"]:
        console.print(
            "[yellow]verify: no prompt has a reference answer or tests, so nothing was checked. Ingest reads them "
            "from a `reference_answer`, `answer` or `final_answer` column and a `tests`, `test_code` or `unit_tests` "
            "column; map others with `ingest.answer_column` (--answer-column) and `ingest.tests_column`[/yellow]"
        )
    if counts["bad_references"]:
        bad = table.filter(
            (pl.col("verifier") == "math") & (pl.col("status") == "error") & pl.col("reference").is_null()
        ).unique("prompt_id", maintain_order=True)
        where = prompts.select("prompt_id", "source", "source_line")
        lines = [
            f"{s}:{n}: {e}"
            for s, n, e in bad.join(where, on="prompt_id").select("source", "source_line", "error").iter_rows()
        ]
        console.print(
            f"warning: {counts['bad_references']} reference answer(s) do not parse; their candidates are recorded as "
            f"errors in verifications.parquet and make no verified pair:\n  "
            + "\n  ".join(lines[:5])
            + ("\n  ..." if len(lines) > 5 else ""),
            style="yellow",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    summary("verify", counts)
    return counts


STAGE = Stage(name="verify", order=55, step=step, section="verify", settings=VerifyConfig)
