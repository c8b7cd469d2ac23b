"""`prefab eval`: did the data make the model better? Win rate of a candidate against its base.

Both models answer held-out prompts (pipeline.models.llm, transformers backend, greedy); the pairwise judge of
pipeline.stages.judge compares each pair of answers in both orders, with the judge settings a run used (its config's
`judge:` section), or for a model alone `scoring: logprobs` where it is local or embedded. Each prompt scores 1
(candidate wins both orders), 0 (base wins both) or in between (ties, or the judge flipping with the order). Reported:
win/tie/loss rates with Wilson intervals, the win rate (ties half) with a bootstrap interval, and a
length-controlled win rate: a logistic regression of the score on the (tanh-squashed, standardised)
length difference, read at zero difference, as length-controlled AlpacaEval does, so a candidate does not
win by writing longer. With a DPO test split, also the implicit-reward accuracy: how often
beta * (log pi(y|x) - log pi_ref(y|x)) ranks the chosen response above the rejected one (TRL's own metric).
"""

import json
import math
import tempfile
import warnings
from pathlib import Path

from pipeline.core.cache import CallCache
from pipeline.core.config import EMBEDDED_LLM, JudgeConfig, ModelSpec
from pipeline.core.errors import InputError, unreadable
from pipeline.core.jsonl import json_lines
from pipeline.core.prompts import BadRow, prompt_messages
from pipeline.core.stats import wilson
from pipeline.core.store import atomic_write_text, content_id, prompt_id
from pipeline.models.backends import Result
from pipeline.models.checkpoints import load_tokenizer, model_path
from training import formats
from training.load import load_data
from training.progress import evaluate_with_progress

SCORE = {"chosen": 1.0, "tie": 0.5, "rejected": 0.0}  # "chosen" = the candidate's answer, shown first in order ab


# ---------------------------------------------------------------- statistics


def prompt_score(verdict_ab: str | None, verdict_ba: str | None) -> float | None:
    """Candidate's score on one prompt from the two orders (a missing order counts the other alone)."""
    scores = [SCORE[v] for v in (verdict_ab, verdict_ba) if v is not None]
    return sum(scores) / len(scores) if scores else None


def win_rates(scores: list[float], alpha: float = 0.05, seed: int = 0) -> dict:
    """Win/tie/loss rates (Wilson intervals) and the win rate with ties counted half (bootstrap interval)."""
    import numpy as np  # start-up: numpy
    from scipy.stats import bootstrap  # start-up: scipy

    n = len(scores)
    out: dict = {"n": n}
    if n == 0:
        return out
    counts = {
        "win": sum(s > 0.5 for s in scores),
        "tie": sum(s == 0.5 for s in scores),
        "loss": sum(s < 0.5 for s in scores),
    }
    for name, k in counts.items():
        low, high = wilson(k, n, alpha=alpha, digits=None)
        out[name] = {"count": int(k), "rate": k / n, "ci": [low, high]}
    values = np.asarray(scores, dtype=float)
    rate = float(values.mean())
    if n > 1 and values.std() > 0:
        res = bootstrap(
            (values,),
            np.mean,
            confidence_level=1 - alpha,
            n_resamples=2000,
            method="percentile",
            random_state=np.random.default_rng(seed),
        )
        ci = [float(res.confidence_interval.low), float(res.confidence_interval.high)]
    else:
        ci = [rate, rate]
    out["win_rate"] = {"rate": rate, "ci": ci}
    return out


def length_controlled(scores: list[float], length_diffs: list[float], alpha: float = 0.05) -> dict:
    """Win rate at zero length difference: logit P(candidate wins) = a + b * tanh(diff / sd(diff)); LC = sigmoid(a).

    Falls back to the raw win rate (with a note) when the regression is not identified: fewer than 3
    prompts, no length variation, or outcomes the length separates perfectly.
    """
    import numpy as np  # start-up: numpy
    import statsmodels.api as sm  # start-up: statsmodels

    y = np.asarray(scores, dtype=float)
    d = np.asarray(length_diffs, dtype=float)
    raw = float(y.mean()) if len(y) else None
    if len(y) < 3 or d.std() == 0 or y.std() == 0:
        return {
            "rate": raw,
            "ci": None,
            "length_coef": None,
            "note": "not identifiable (too few prompts or no variation): raw win rate",
        }
    x = np.tanh(d / d.std())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            fit = sm.GLM(y, sm.add_constant(x), family=sm.families.Binomial()).fit()
            low, high = fit.conf_int(alpha=alpha)[0]
        except Exception as e:  # perfect separation, no convergence
            return {
                "rate": raw,
                "ci": None,
                "length_coef": None,
                "note": f"regression failed ({type(e).__name__}): raw win rate",
            }
    sigmoid = lambda v: float(1 / (1 + math.exp(-v)))  # noqa: E731
    return {
        "rate": sigmoid(fit.params[0]),
        "ci": [sigmoid(low), sigmoid(high)],
        "length_coef": float(fit.params[1]),
        "note": None,
    }


# ---------------------------------------------------------------- prompts


def read_prompts(path: str | Path, limit: int | None = None) -> list[list[dict]]:
    """Held-out prompts as chat messages from a JSONL file: an export's test split (any format) or
    {"prompt": str | messages} / {"messages": [...]} rows. Duplicates are dropped."""
    path = Path(path)
    if not path.exists():
        raise InputError(
            f"prompts file {path} does not exist",
            hint="pass an export's test split, e.g. runs/demo/exports/dpo_test.jsonl",
        )
    out, seen = [], set()
    try:
        for i, row, problem in json_lines(path):
            if problem:
                raise InputError(problem, where=f"{path}:{i}", hint="each line must be one JSON object (JSONL)")
            messages = _messages_of(row, f"{path}:{i}")
            key = prompt_id(messages)
            if key not in seen:
                seen.add(key)
                out.append(messages)
    except OSError as e:
        raise unreadable(path, e) from None
    if not out:
        raise InputError(f"{path} holds no prompts", where=str(path))
    return out[:limit] if limit else out


def _messages_of(row, where: str) -> list[dict]:
    """The prompt of a line (pipeline/core/prompts.py): `prompt` (text or a chat), `messages` (an SFT chat: the prompt
    is what comes before the answer) or `input.messages` (OpenAI's preference format)."""
    try:
        if not isinstance(row, dict):
            raise BadRow("line", f"expected a JSON object, got {type(row).__name__}")
        return prompt_messages(row, prompt_columns=("prompt", "input"), messages_columns=("messages",), answered=True)
    except BadRow as e:
        raise InputError(
            f"{e.field}: {e}",
            where=where,
            hint="a line holds `prompt` (text or a chat), `messages` or `input.messages`: "
            'write {"prompt": "..."} or {"messages": [{"role": "user", "content": "..."}]}',
        ) from None


# ---------------------------------------------------------------- models


def answer(
    model: str, prompts: list[list[dict]], out_dir: Path, *, max_tokens: int, batch_size: int = 8
) -> list[Result]:
    """The model's greedy answers, cached per model; a local checkpoint's answers are keyed by its files too
    (pipeline/models/checkpoints.py: fingerprint), so one retrained in place answers afresh."""
    from pipeline.models.llm import Request, call_llm, check_spec  # start-up: rich.console, rich.progress, rich.table

    spec = ModelSpec(backend="transformers", model=model, batch_size=batch_size)
    check_spec(spec)  # a model that is not there fails before its cache is made
    cache = CallCache(out_dir / "calls" / f"{content_id('model', model)}.sqlite")
    requests = [Request(m, temperature=0.0, max_tokens=max_tokens, seed=0) for m in prompts]
    try:
        return call_llm(spec, requests, cache, f"answers {Path(model).name}")
    finally:
        cache.close()


def reward_accuracy(
    candidate: str, base: str, test_file: str | Path, *, beta: float = 0.1, max_length: int | None = 512
) -> dict:
    """DPO implicit-reward accuracy of the candidate (policy) against the base (reference) on held-out pairs,
    computed by TRL's DPOTrainer.evaluate so it matches what training logs."""
    from transformers import AutoModelForCausalLM  # start-up: transformers
    from trl import DPOConfig, DPOTrainer  # start-up: trl

    dataset, fmt = load_data(test_file, "dpo")
    cand, ref = model_path(candidate), model_path(base)
    tokenizer = load_tokenizer(cand, chat=formats.is_chat(fmt))
    import torch  # start-up: torch

    with tempfile.TemporaryDirectory() as tmp:
        args = DPOConfig(
            output_dir=tmp,
            beta=beta,
            max_length=max_length,
            per_device_eval_batch_size=4,
            report_to="none",
            bf16=torch.cuda.is_available(),
            activation_checkpointing=False,
        )
        trainer = DPOTrainer(
            model=cand,
            ref_model=AutoModelForCausalLM.from_pretrained(ref),
            args=args,
            train_dataset=dataset,
            eval_dataset=dataset,
            processing_class=tokenizer,
        )
        metrics = evaluate_with_progress(trainer, "implicit reward accuracy")
    return {
        "pairs": len(dataset),
        "beta": beta,
        "accuracy": metrics.get("eval_rewards/accuracies"),
        "margin": metrics.get("eval_rewards/margins"),
    }


# ---------------------------------------------------------------- the evaluation


def evaluate(
    base: str,
    candidate: str,
    prompts: list[list[dict]],
    judge: ModelSpec,
    out_dir: str | Path,
    *,
    judge_config: JudgeConfig | None = None,
    max_tokens: int = 256,
    test_file: str | Path | None = None,
    beta: float = 0.1,
) -> dict:
    """Answer, judge in both orders, score; write eval.json and eval_rows.jsonl into out_dir; return the summary.
    Without judge_config, the judge gets the settings default_judge_config gives its kind of model."""
    from pipeline.stages.judge import judge_pairs  # start-up: rich.console, rich.progress, rich.table

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    judge_config = judge_config or default_judge_config(judge)
    base_answers = answer(base, prompts, out_dir, max_tokens=max_tokens)
    cand_answers = answer(candidate, prompts, out_dir, max_tokens=max_tokens)
    rows, items = [], []
    for messages, b, c in zip(prompts, base_answers, cand_answers, strict=True):
        rows.append({"prompt": messages, "base": b.text, "candidate": c.text, "error": b.error or c.error})
        if not rows[-1]["error"]:
            items.append((messages, c.text or "", b.text or ""))
    cache = CallCache(out_dir / "calls" / "judge.sqlite")
    try:
        verdicts = iter(judge_pairs(judge, items, cache, judge_config))
    finally:
        cache.close()
    scores, diffs = [], []
    for row, b, c in zip(rows, base_answers, cand_answers, strict=True):
        if row["error"]:
            continue
        v = next(verdicts)
        row.update(
            verdict_ab=v["verdict_ab"],
            verdict_ba=v["verdict_ba"],
            score=prompt_score(v["verdict_ab"], v["verdict_ba"]),
            judge_error=v["error"],
        )
        row["length_diff"] = _length(c) - _length(b)
        if row["score"] is not None:
            scores.append(row["score"])
            diffs.append(row["length_diff"])
    summary = {
        "base": base,
        "candidate": candidate,
        "judge": judge.label,
        "judge_scoring": judge_config.scoring,
        "prompts": len(prompts),
        "judged": len(scores),
        "failed": len(prompts) - len(scores),
        **win_rates(scores),
        "length_controlled": length_controlled(scores, diffs),
        "mean_length": {
            "base": _mean([_length(a) for a in base_answers]),
            "candidate": _mean([_length(a) for a in cand_answers]),
        },
    }
    if test_file:
        summary["reward_accuracy"] = reward_accuracy(candidate, base, test_file, beta=beta)
    atomic_write_text(out_dir / "eval_rows.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    atomic_write_text(out_dir / "eval.json", json.dumps(summary, indent=1))
    return summary


def _length(result: Result) -> float:
    """Answer length in tokens (as generated), words when the backend gave no count."""
    if result.completion_tokens is not None:
        return float(result.completion_tokens)
    return float(len((result.text or "").split()))


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 2) if values else None


def judge_spec(model: str, base_url: str | None = None, api_key_env: str | None = None) -> ModelSpec:
    if base_url:
        return ModelSpec(name=model, backend="openai", model=model, base_url=base_url, api_key_env=api_key_env)
    return ModelSpec(name=model, backend="transformers", model=model)


def default_judge_config(judge: ModelSpec) -> JudgeConfig:
    """Settings for a judge no config describes: a local or embedded model (transformers) answers with one token, A
    or B, read from its probabilities (`scoring: logprobs`): a small model's JSON verdicts are mostly unparseable,
    and the token always gives a verdict; a served model writes a JSON verdict."""
    return JudgeConfig(judges=[judge], scoring="logprobs" if judge.backend == "transformers" else "json")


def choose_judge(
    configured: JudgeConfig | None, name: str | None = None, base_url: str | None = None, api_key_env: str | None = None
) -> tuple[ModelSpec, JudgeConfig]:
    """The judge of an evaluation and its settings: a run's (or config's) judge, by name or its first, with the run's
    judge settings, as the pipeline judged; or the model named (embedded:smollm2 by default) with
    default_judge_config."""
    if configured is not None and not base_url:
        by_label = {j.label: j for j in configured.judges}
        if name is None and configured.judges:
            return configured.judges[0], configured
        if name in by_label:
            return by_label[name], configured
    spec = judge_spec(name or EMBEDDED_LLM, base_url, api_key_env)
    return spec, default_judge_config(spec)


def print_summary(summary: dict) -> None:
    from pipeline.core.progress import summary as table  # start-up: rich.console, rich.progress, rich.table

    def pct(d):
        if not d or d.get("rate") is None:
            return "n/a"
        ci = d.get("ci")
        return f"{d['rate']:.1%}" + (f" [{ci[0]:.1%}, {ci[1]:.1%}]" if ci else "")

    rows = {"prompts judged": summary["judged"], "failed": summary["failed"]}
    if summary.get("judge_scoring"):
        rows["judge scoring"] = summary["judge_scoring"]
    for k in ("win", "tie", "loss", "win_rate"):
        if k in summary:
            rows[k if k != "win_rate" else "win rate (ties half)"] = pct(summary[k])
    rows["length-controlled win rate"] = pct(summary["length_controlled"])
    rows["mean length base / candidate"] = f"{summary['mean_length']['base']} / {summary['mean_length']['candidate']}"
    if "reward_accuracy" in summary:
        ra = summary["reward_accuracy"]
        rows["implicit reward accuracy"] = (
            f"{ra['accuracy']:.1%} of {ra['pairs']} test pairs" if ra["accuracy"] is not None else "n/a"
        )
    table(f"eval {Path(summary['candidate']).name} vs {Path(summary['base']).name} (judge {summary['judge']})", rows)


def default_out(candidate: str) -> Path:
    path = Path(candidate)
    return path / "eval" if path.is_dir() else Path("runs") / "eval" / content_id("eval", candidate)
