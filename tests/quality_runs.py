"""Small run directories for the quality tests (embed, dedup, judge, pair, route, report): real tables, written
through the real store, so every stage reads exactly what the earlier stages would have written."""

import polars as pl

from pipeline.core.config import Config, IngestConfig, config_model
from pipeline.core.schema import TABLES
from pipeline.core.store import Run, candidate_id, prompt_id


def prompts_frame(texts: list[str]) -> pl.DataFrame:
    rows = []
    for i, text in enumerate(texts):
        messages = [{"role": "user", "content": text}]
        rows.append(
            {
                "prompt_id": prompt_id(messages),
                "messages": messages,
                "source": "test.jsonl",
                "source_line": i + 1,
                "category": None,
                "duplicate_of": None,
                "cluster": None,
                "excluded_reason": None,
            }
        )
    return pl.DataFrame(rows, schema=TABLES["prompts"])


def candidates_frame(prompts: pl.DataFrame, answers: dict[str, list[str | None]], model: str = "gen") -> pl.DataFrame:
    """answers: prompt text -> candidate texts (None = a failed call)."""
    rows = []
    for pid, messages in zip(prompts["prompt_id"].to_list(), prompts["messages"].to_list(), strict=True):
        for i, text in enumerate(answers.get(messages[-1]["content"], [])):
            rows.append(
                {
                    "candidate_id": candidate_id(pid, model, {"t": 0.7}, i),
                    "prompt_id": pid,
                    "model": model,
                    "temperature": 0.7,
                    "top_p": 1.0,
                    "sample_index": i,
                    "text": text,
                    "finish_reason": "stop" if text else None,
                    "prompt_tokens": 5,
                    "completion_tokens": len((text or "").split()),
                    "latency_s": 0.01,
                    "error": None if text is not None else "HTTP 500: boom",
                }
            )
    return pl.DataFrame(rows, schema=TABLES["candidates"])


def judgments_frame(scores: dict[str, float | None], judge: str = "judge") -> pl.DataFrame:
    """candidate_id -> overall (None = an unparseable answer)."""
    rows = [
        {
            "candidate_id": c,
            "judge": judge,
            "aspects": [{"name": "helpfulness", "score": s, "rationale": "r"}],
            "overall": s,
            "rationale": "r",
            "raw": "{}",
            "error": None if s is not None else "unparseable: no JSON",
        }
        for c, s in scores.items()
    ]
    return pl.DataFrame(rows, schema=TABLES["judgments"])


def make_run(path, texts: list[str], answers: dict | None = None, **sections) -> tuple[Run, Config]:
    run = Run(path)
    prompts = prompts_frame(texts)
    run.write("prompts", prompts)
    if answers:
        run.write("candidates", candidates_frame(prompts, answers))
    config = config_model().model_validate(
        {"run": str(path), "ingest": IngestConfig(paths=["unused.jsonl"]).model_dump(), **sections}
    )
    return run, config
