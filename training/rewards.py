"""GRPO's reward: the verifier that labels the run's pairs, so the training signal and the data agree.

A completion for a prompt with a reference answer gets 1.0 when math-verify finds its final answer equal to the
reference (pipeline/stages/verify.py `check`), else 0.0; for a prompt with tests, the share of tests its code passes in
the sandbox (pipeline/sandbox/bwrap.py `run`); a row with neither gets None, which GRPOTrainer leaves out of the sum.
"""

from pathlib import Path

from pipeline.core.errors import InputError
from pipeline.sandbox.bwrap import run_many, validate_tests


def completion_text(completion) -> str:
    """A conversational completion is a list of messages; its text is the last one's content."""
    if isinstance(completion, list):
        return completion[-1]["content"] if completion else ""
    return completion


def math_scores(items: list[tuple[str, str]], timeout_s: int = 5, float_rounding: int = 6) -> list[float | None]:
    """(reference, text) -> 1.0 correct, 0.0 otherwise, None when the reference does not parse (no signal, not a
    penalty). math-verify's time limit needs the main thread: from another one the checks run in a child process."""
    from pipeline.stages.verify import (  # start-up: polars, pydantic, rich.console, rich.progress, rich.table, yaml
        math_checker,
    )

    with math_checker() as check:
        results = check(items, timeout_s, float_rounding)
    return [
        None if r["status"] == "error" and r["reference"] is None else float(r["status"] == "correct") for r in results
    ]


def code_scores(items: list[tuple[str, str]]) -> list[float]:
    """(tests, text) -> share of tests the completion's code passes in the sandbox."""
    from pipeline.stages.verify import (  # start-up: polars, pydantic, rich.console, rich.progress, rich.table, yaml
        extract_code,
    )

    return [r.score for r in run_many([(extract_code(text), tests) for tests, text in items])]


def verifier(prompts, completions, reference_answer=None, tests=None, **_) -> list[float | None]:
    """GRPOTrainer reward function: one score per completion; the dataset's `reference_answer` and `tests` columns
    come in as lists, one value per completion."""
    n = len(completions)
    references, tests = reference_answer or [None] * n, tests or [None] * n
    texts = [completion_text(c) for c in completions]
    scores: list[float | None] = [None] * n
    math = [i for i in range(n) if references[i] and not tests[i]]
    code = [i for i in range(n) if tests[i]]
    for i, score in zip(math, math_scores([(references[i], texts[i]) for i in math]) if math else [], strict=True):
        scores[i] = score
    for i, score in zip(code, code_scores([(tests[i], texts[i]) for i in code]) if code else [], strict=True):
        scores[i] = score
    return scores


def check_ground_truth(path: str | Path, rows: list[dict], timeout_s: int = 5) -> None:
    """Before training: every reference answer parses and every test compiles, or an InputError naming file:line."""
    from pipeline.stages.verify import (  # start-up: polars, pydantic, rich.console, rich.progress, rich.table, yaml
        REFERENCE_HINT,
        parse_reference,
    )

    seen: dict[str, str | None] = {}
    for i, row in enumerate(rows, 1):
        if row.get("tests"):
            validate_tests(row["tests"], where=f"{path}:{i}")
        elif row.get("reference_answer"):
            ref = row["reference_answer"]
            if ref not in seen:
                seen[ref] = parse_reference(ref, timeout_s)[1]
            if seen[ref]:
                raise InputError(
                    seen[ref],
                    where=f"{path}:{i}",
                    hint=f"fix or drop the row ({REFERENCE_HINT}); `prefab verify` lists such references by source "
                    "line",
                )
