"""Small runs with the tables push needs (prompts, candidates, judgments, pair_judgments, embeddings,
pairs with routes), written through the real run store, so labeling tests need no generation stage."""

import random
from pathlib import Path

import polars as pl

from labeling.settings import LabelingConfig
from pipeline.core.config import Config, IngestConfig, config_model
from pipeline.core.store import Run, candidate_id, pair_id, prompt_id

DIMS = 8


def make_run(
    path: Path,
    n_pairs: int = 6,
    *,
    human_every: int = 2,
    labeling: LabelingConfig | None = None,
    seed: int = 0,
    with_vectors: bool = True,
    long_text: int = 0,
) -> tuple[Run, Config]:
    """A run of n_pairs pairs, one prompt each; every `human_every`-th pair is routed to humans.

    Chosen candidates are written by "gen-big" and score higher; half of the pairs also have a pairwise
    judge verdict (consistent), the rest only pointwise scores.
    """
    rng = random.Random(seed)
    run = Run(path)
    prompts, candidates, judgments, pair_judgments, embeddings, pairs = [], [], [], [], [], []
    for i in range(n_pairs):
        messages = [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": f"Question number {i}: what is {i} + {i}?"},
        ]
        pid = prompt_id(messages)
        prompts.append(
            {
                "prompt_id": pid,
                "messages": messages,
                "source": "test.jsonl",
                "source_line": i + 1,
                "category": None,
                "duplicate_of": None,
                "cluster": i % 3,
            }
        )
        ids = []
        for _j, (model, score) in enumerate((("gen-big", 4.5 - (i % 3) * 0.5), ("gen-small", 2.0 + (i % 2)))):
            cid = candidate_id(pid, model, {"temperature": 0.7}, 0)
            text = f"Answer {i} from {model}: {2 * i}." + ("x" * long_text)
            candidates.append(
                {
                    "candidate_id": cid,
                    "prompt_id": pid,
                    "model": model,
                    "temperature": 0.7,
                    "top_p": 1.0,
                    "sample_index": 0,
                    "text": text,
                    "finish_reason": "stop",
                    "prompt_tokens": 10,
                    "completion_tokens": 5,
                    "latency_s": 0.1,
                    "error": None,
                }
            )
            judgments.append(
                {
                    "candidate_id": cid,
                    "judge": "judge-1",
                    "aspects": [],
                    "overall": score,
                    "rationale": "ok",
                    "raw": "{}",
                    "error": None,
                }
            )
            embeddings.append(
                {
                    "id": cid,
                    "kind": "candidate",
                    "model": "embedded:all-minilm-l6-v2",
                    "vector": [rng.random() for _ in range(DIMS)],
                }
            )
            ids.append((cid, score))
        (chosen, cs), (rejected, rs) = ids
        pair = pair_id(chosen, rejected)
        if with_vectors:
            embeddings.append(
                {
                    "id": pid,
                    "kind": "prompt",
                    "model": "embedded:all-minilm-l6-v2",
                    "vector": [rng.random() for _ in range(DIMS)],
                }
            )
        route = "human" if i % human_every == 0 else "auto"
        pairs.append(
            {
                "pair_id": pair,
                "prompt_id": pid,
                "chosen_id": chosen,
                "rejected_id": rejected,
                "chosen_score": cs,
                "rejected_score": rs,
                "margin": cs - rs,
                "similarity": 0.5,
                "strategy": "best_vs_worst",
                "route": route,
                "route_reason": "small margin" if route == "human" else "confident judge",
            }
        )
        if i % 2 == 0:
            verdict = "tie" if i % 4 == 2 else "chosen"
            pair_judgments.append(
                {
                    "pair_id": pair,
                    "judge": "judge-1",
                    "verdict_ab": verdict,
                    "verdict_ba": verdict,
                    "consistent": True,
                    "confidence": 0.8,
                    "raw": "{}",
                    "error": None,
                }
            )
    run.path.mkdir(parents=True, exist_ok=True)
    for name, rows in (
        ("prompts", prompts),
        ("candidates", candidates),
        ("judgments", judgments),
        ("pair_judgments", pair_judgments),
        ("embeddings", embeddings),
        ("pairs", pairs),
    ):
        from pipeline.core.schema import TABLES

        run.write(name, pl.DataFrame(rows, schema=TABLES[name]))
    config = config_model()(
        run=str(path), ingest=IngestConfig(paths=["test.jsonl"]), labeling=labeling or LabelingConfig()
    )
    snapshot = config.model_dump(mode="json")
    snapshot["source"] = None
    run.update_manifest(config=snapshot)
    return run, config
