"""LLM-as-judge: a pointwise rubric (UltraFeedback-style aspects) and a position-swapped pairwise judge.

Pointwise: each candidate is rated on the configured aspects (name, description, scale, weight), each with
a rationale. The answer is JSON: sent as a JSON schema in `response_format` when the backend honours one
(openai) and `structured_output` is on, otherwise asked for in the prompt and parsed and validated here.
An answer that is not JSON, misses an aspect or leaves the scale is asked again (`parse_retries` times)
with another seed and `retry_temperature`, so neither the call cache nor greedy decoding hands back the
same bad answer; after that it is recorded with its raw text, its error and a null score. One bad answer
never fails a batch.

`scoring: logprobs` instead asks one single-token question per aspect and takes the probability-weighted mean
of the scale's digits (as G-Eval): always parseable and graded, which is what a small local judge (the
embedded SmolLM2 rarely writes valid JSON) needs; the rationale is then the digit distribution in `raw`.

Pairwise (`judge_pairs`, run by the route stage and by evaluation): A vs B in both orders. `consistent` when
both orders name the same winner (ties allowed); `confidence` from the two verdicts and, when logprobs are
asked for and returned, from the probability of the verdict tokens.

Several judges form an ensemble: one row per (candidate, judge); their agreement goes to the manifest.
"""

import json
import math
import re
from dataclasses import replace

import polars as pl
from pydantic import BaseModel, ValidationError

from pipeline.core.cache import run_cache
from pipeline.core.config import Config, JudgeConfig, RewardModelSpec
from pipeline.core.progress import console, summary
from pipeline.core.queries import answered, messages_of
from pipeline.core.registry import backend
from pipeline.core.schema import TABLES, empty
from pipeline.core.stage import Stage
from pipeline.core.store import Run, TableParts, content_id
from pipeline.models.checkpoints import local_fingerprints
from pipeline.models.llm import Request, Result, call_llm, check_spec, part_size, ticker
from pipeline.models.reward import reward_scores

DEFAULT_DESCRIPTIONS = {  # after UltraFeedback's annotation guidelines
    "helpfulness": "Does it fulfil the task: correct, informative, useful, at the right level of detail?",
    "honesty": "Does it express uncertainty where warranted and avoid stating guesses with false confidence?",
    "instruction_following": "Does it follow every instruction and constraint of the prompt (format, length, style)?",
    "truthfulness": "Is it free of fabricated facts, contradictions and hallucinations?",
}

RUBRIC_SYSTEM = """You are a strict, fair evaluator of AI assistant responses.
Rate the response to the conversation below on each aspect, on the scale given. For each aspect first write a
one- or two-sentence rationale, then the score. Do not let length or style sway you.

Aspects:
{aspects}

Answer with JSON only, exactly in this form:
{example}"""

PAIRWISE_SYSTEM = """You are a strict, fair evaluator of AI assistant responses.
Compare two responses, A and B, to the conversation below. Decide which one serves the user better overall:
correct, helpful, honest, follows the instructions. Say "tie" only if they are equally good. The order of
the responses and their length must not sway you.

Answer with JSON only, exactly in this form:
{"rationale": "<one or two sentences>", "winner": "A" | "B" | "tie"}"""


ASPECT_SYSTEM = """You are a strict, fair evaluator of AI assistant responses.
Rate the response to the conversation below for {name}: {description}
Reply with a single digit from {lo} (worst) to {hi} (best)."""

PAIRWISE_TOKEN_SYSTEM = """You are a strict, fair evaluator of AI assistant responses.
Compare two responses, A and B, to the conversation below. Which one serves the user better overall:
correct, helpful, honest, follows the instructions? Reply with a single letter: A or B."""

TIE_BAND = 0.1  # logprob pairwise: A and B within 0.45..0.55 of their shared probability is a tie


class AspectAnswer(BaseModel):
    rationale: str = ""
    score: float


class PairAnswer(BaseModel):
    rationale: str = ""
    winner: str


# ---------------------------------------------------------------- prompts and schemas


def render_conversation(messages: list[dict]) -> str:
    return "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in messages)


def _scale(aspect) -> str:
    return f"{aspect.min:g} to {aspect.max:g}"


def rubric_messages(aspects, messages: list[dict], response: str) -> list[dict]:
    lines = [
        f"- {a.name} ({_scale(a)}): {a.description or DEFAULT_DESCRIPTIONS.get(a.name, '')}".rstrip(": ")
        for a in aspects
    ]
    example = json.dumps({a.name: {"rationale": "...", "score": a.max} for a in aspects})
    system = RUBRIC_SYSTEM.format(aspects="\n".join(lines), example=example)
    user = f"## Conversation\n\n{render_conversation(messages)}\n\n## Response to rate\n\n{response}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def rubric_schema(aspects) -> dict:
    """OpenAI `response_format` (strict json_schema) for the rubric answer."""
    props = {
        a.name: {
            "type": "object",
            "additionalProperties": False,
            "required": ["rationale", "score"],
            "properties": {
                "rationale": {"type": "string"},
                "score": {"type": "number", "minimum": a.min, "maximum": a.max},
            },
        }
        for a in aspects
    }
    schema = {
        "type": "object",
        "properties": props,
        "required": [a.name for a in aspects],
        "additionalProperties": False,
    }
    return {"type": "json_schema", "json_schema": {"name": "rubric", "strict": True, "schema": schema}}


def pairwise_messages(messages: list[dict], a: str, b: str) -> list[dict]:
    user = f"## Conversation\n\n{render_conversation(messages)}\n\n## Response A\n\n{a}\n\n## Response B\n\n{b}"
    return [{"role": "system", "content": PAIRWISE_SYSTEM}, {"role": "user", "content": user}]


PAIRWISE_SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "verdict",
        "strict": True,
        "schema": {
            "type": "object",
            "additionalProperties": False,
            "required": ["rationale", "winner"],
            "properties": {"rationale": {"type": "string"}, "winner": {"type": "string", "enum": ["A", "B", "tie"]}},
        },
    },
}


# ---------------------------------------------------------------- parsing


def extract_json(text: str | None):
    """The JSON object in a model's answer: the whole text, a ```json fence, or the outermost {...}."""
    if not text or not text.strip():
        raise ValueError("empty answer")
    candidates = [text.strip()]
    fence = re.search(r"```(?:json)?\s*(.*?)```", text, re.S)
    if fence:
        candidates.append(fence.group(1).strip())
    if "{" in text and "}" in text:
        candidates.append(text[text.index("{") : text.rindex("}") + 1])
    for c in candidates:
        try:
            return json.loads(c)
        except ValueError:
            continue
    raise ValueError("no JSON object in the answer")


def parse_rubric(text: str | None, aspects) -> list[dict]:
    """[{name, score, rationale}] in aspect order; ValueError saying what is wrong otherwise."""
    data = extract_json(text)
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    if isinstance(data.get("aspects"), dict):  # {"aspects": {...}} is a common variant
        data = data["aspects"]
    out = []
    for a in aspects:
        value = data.get(a.name)
        if value is None:
            raise ValueError(f"aspect {a.name!r} is missing")
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            value = {"score": value}
        try:
            answer = AspectAnswer.model_validate(value)
        except ValidationError as e:
            raise ValueError(f"aspect {a.name!r}: {e.errors()[0]['msg']}") from None
        if not math.isfinite(answer.score) or not a.min <= answer.score <= a.max:
            raise ValueError(f"aspect {a.name!r}: score {answer.score:g} is outside {_scale(a)}")
        out.append({"name": a.name, "score": answer.score, "rationale": answer.rationale})
    return out


def overall_score(scores: list[dict], aspects) -> float:
    """Weighted mean on the aspects' own scale (each aspect normalised first, so 1-5 and 1-10 mix fairly)."""
    total = sum(a.weight for a in aspects)
    norm = sum(a.weight * (s["score"] - a.min) / (a.max - a.min) for s, a in zip(scores, aspects, strict=True)) / total
    lo = sum(a.weight * a.min for a in aspects) / total
    hi = sum(a.weight * a.max for a in aspects) / total
    return lo + norm * (hi - lo)


WINNERS = {"a": "A", "b": "B", "tie": "tie", "response a": "A", "response b": "B", "equal": "tie", "draw": "tie"}


def parse_verdict(text: str | None) -> str:
    """'A', 'B' or 'tie'; ValueError otherwise."""
    data = extract_json(text)
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    try:
        answer = PairAnswer.model_validate(data)
    except ValidationError as e:
        raise ValueError(f"verdict: {e.errors()[0]['loc']}: {e.errors()[0]['msg']}") from None
    winner = WINNERS.get(answer.winner.strip().strip('"').lower())
    if winner is None:
        raise ValueError(f"winner {answer.winner!r} is not A, B or tie")
    return winner


# ---------------------------------------------------------------- asking with retries


def attempt_request(request: Request, cfg, attempt: int) -> Request:
    """The request as asked on a given attempt: the first at the judge's temperature and seed, retries sampling
    more freely with seed + attempt (so the cache does not hand back the same bad answer)."""
    temperature = cfg.temperature if attempt == 0 else max(cfg.retry_temperature, cfg.temperature)
    return replace(request, temperature=temperature, seed=cfg.seed + attempt)


def ask_parsed(spec, base_requests: list[Request], parse, cache, cfg, description: str, tick=None) -> list[dict]:
    """Ask each request; re-ask the ones whose answer fails `parse(result)` with seed + attempt at retry_temperature.

    A failed call is not re-asked here: call_llm has already spent its retry budget on it (one policy for
    generators and judges); it is recorded, and the next judge run asks again (failures are not cached).
    Returns per request {"value" (parsed or None), "raw", "error", "attempts", "result"}.
    """
    out: list[dict] = [
        {"value": None, "raw": None, "error": None, "attempts": 0, "result": None} for _ in base_requests
    ]
    pending = list(range(len(base_requests)))
    for attempt in range(cfg.parse_retries + 1):
        if not pending:
            break
        requests = [attempt_request(base_requests[i], cfg, attempt) for i in pending]
        label = description if attempt == 0 else f"{description} (retry {attempt}: {len(pending)})"
        results = call_llm(
            spec, requests, cache, label, tick=tick if attempt == 0 else None
        )  # retries: a bar of their own
        still = []
        for i, result in zip(pending, results, strict=True):
            slot = out[i]
            slot.update(attempts=attempt + 1, result=result, raw=result.text)
            if result.error is not None:
                slot["error"] = f"call failed: {result.error}"
                continue
            try:
                slot["value"], slot["error"] = parse(result), None
            except ValueError as e:
                slot["error"] = f"unparseable: {e}" if "outside" not in str(e) else f"out of range: {e}"
                still.append(i)
        pending = still
    return out


def scoring_requests(spec, items: list[tuple[list[dict], str]], aspects, cfg) -> list[Request]:
    """What pointwise judging asks of (messages, response) items (before attempt_request): a JSON rubric per item,
    or with `scoring: logprobs` one single-token request per item and aspect. `prefab plan` counts these too."""
    if cfg.scoring == "logprobs":
        depth = backend(spec.backend).top_logprobs
        return [
            Request(aspect_messages(a, messages, response), max_tokens=1, logprobs=True, top_logprobs=depth)
            for messages, response in items
            for a in aspects
        ]
    structured = cfg.structured_output and backend(spec.backend).json_schema
    return [
        Request(
            rubric_messages(aspects, messages, response),
            max_tokens=cfg.max_tokens,
            response_format=rubric_schema(aspects) if structured else None,
        )
        for messages, response in items
    ]


def judge_candidates(spec, items: list[tuple[list[dict], str]], aspects, cache, cfg, tick=None) -> list[dict]:
    """Judgment rows (without ids) for (messages, response) items: aspects, overall, rationale, raw, error."""
    if cfg.scoring == "logprobs":
        return judge_by_logprobs(spec, items, aspects, cache, cfg, tick)
    answers = ask_parsed(
        spec,
        scoring_requests(spec, items, aspects, cfg),
        lambda result: parse_rubric(result.text, aspects),
        cache,
        cfg,
        f"judge {spec.label}",
        tick,
    )
    rows = []
    for ans in answers:
        scores = ans["value"]
        if scores is None:
            rows.append(
                {
                    "aspects": [{"name": a.name, "score": None, "rationale": None} for a in aspects],
                    "overall": None,
                    "rationale": None,
                    "raw": ans["raw"],
                    "error": f"{ans['error']} (after {ans['attempts']} attempt(s))",
                }
            )
        else:
            rows.append(
                {
                    "aspects": scores,
                    "overall": round(overall_score(scores, aspects), 6),
                    "rationale": "\n".join(f"{s['name']}: {s['rationale']}" for s in scores if s["rationale"]),
                    "raw": ans["raw"],
                    "error": None,
                }
            )
    return rows


def token_distribution(result: Result, allowed) -> dict[str, float]:
    """Probabilities of the allowed one-token answers at the first position, from the returned top logprobs."""
    steps = result.logprobs or []
    if not steps:
        raise ValueError("no logprobs in the answer (the backend must return them for scoring: logprobs)")
    first = steps[0]
    probs: dict[str, float] = {}
    for alt in first.get("top_logprobs") or [first]:
        token = alt["token"].strip()
        if token in allowed:
            probs[token] = probs.get(token, 0.0) + math.exp(alt["logprob"])
    if not probs:
        raise ValueError(f"none of {sorted(allowed)} among the top tokens (answer began {result.text!r})")
    return probs


def aspect_messages(aspect, messages: list[dict], response: str) -> list[dict]:
    description = aspect.description or DEFAULT_DESCRIPTIONS.get(aspect.name, "")
    system = ASPECT_SYSTEM.format(name=aspect.name, description=description, lo=f"{aspect.min:g}", hi=f"{aspect.max:g}")
    user = (
        f"## Conversation\n\n{render_conversation(messages)}\n\n## Response to rate\n\n{response}\n\n"
        f"{aspect.name} score ({aspect.min:g}-{aspect.max:g}):"
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def judge_by_logprobs(spec, items: list[tuple[list[dict], str]], aspects, cache, cfg, tick=None) -> list[dict]:
    """One single-token request per (candidate, aspect); the score is the probability-weighted mean of the scale's
    digits (G-Eval). A small model that never writes valid JSON still gives a usable, graded score."""
    base = scoring_requests(spec, items, aspects, cfg)
    scales = [{str(k) for k in range(int(a.min), int(a.max) + 1)} for a in aspects] * len(items)
    once = cfg.model_copy(update={"parse_retries": 0})  # the distribution is the same on every try
    answers = ask_parsed(spec, base, lambda result: result, cache, once, f"judge {spec.label}", tick)
    rows: list[dict] = []
    for k in range(len(items)):
        scores, raw, errors = [], {}, []
        for j, a in enumerate(aspects):
            ans = answers[k * len(aspects) + j]
            try:
                if ans["value"] is None:
                    raise ValueError(ans["error"])
                probs = token_distribution(ans["value"], scales[k * len(aspects) + j])
            except ValueError as e:
                errors.append(f"{a.name}: {e}")
                continue
            mass = sum(probs.values())
            score = sum(int(t) * p for t, p in probs.items()) / mass
            raw[a.name] = {t: round(p, 6) for t, p in sorted(probs.items())}
            scores.append(
                {
                    "name": a.name,
                    "score": round(score, 6),
                    "rationale": f"probability-weighted over {len(probs)} score tokens (mass {mass:.3f})",
                }
            )
        if errors:
            rows.append(
                {
                    "aspects": [{"name": a.name, "score": None, "rationale": None} for a in aspects],
                    "overall": None,
                    "rationale": None,
                    "raw": json.dumps(raw),
                    "error": "unparseable: " + "; ".join(errors),
                }
            )
        else:
            rows.append(
                {
                    "aspects": scores,
                    "overall": round(overall_score(scores, aspects), 6),
                    "rationale": None,
                    "raw": json.dumps(raw),
                    "error": None,
                }
            )
    return rows


def _verdict_prob(result: Result) -> float | None:
    """Probability the judge gave its verdict token (the last A/B/tie token), from the returned logprobs."""
    tokens = result.logprobs or []
    for tok in reversed(tokens):
        if tok.get("token", "").strip().strip('"').lower() in ("a", "b", "tie"):
            return float(math.exp(tok["logprob"]))
    return None


SIGN = {"chosen": 1, "rejected": -1, "tie": 0}


def pair_confidence(
    ab: str | None, ba: str | None, p_ab: float | None = None, p_ba: float | None = None
) -> float | None:
    """1 when both orders agree (scaled by verdict-token probabilities when known), 0.5 for a tie against a
    winner, 0 for opposite winners, None when an order has no verdict."""
    if ab is None or ba is None:
        return None
    w_ab = 1.0 if p_ab is None else p_ab
    w_ba = 1.0 if p_ba is None else p_ba
    if ab == ba:
        return round((w_ab + w_ba) / 2, 6)
    if 0 in (SIGN[ab], SIGN[ba]):
        return round(0.5 * (w_ba if SIGN[ab] == 0 else w_ab), 6)
    return 0.0


def pair_requests(spec, items: list[tuple[list[dict], str, str]], cfg) -> list[Request]:
    """What pairwise judging asks of (messages, first, second) items (before attempt_request): each pair in both
    orders, a JSON verdict or with `scoring: logprobs` one token. `prefab plan` counts these too."""
    by_token = cfg.scoring == "logprobs"
    structured = cfg.structured_output and backend(spec.backend).json_schema and not by_token
    want_logprobs = by_token or bool(cfg.logprobs)
    depth = (backend(spec.backend).top_logprobs if by_token else 5) if want_logprobs else None
    base = []
    for messages, first, second in items:
        for a, b in ((first, second), (second, first)):
            if by_token:
                base.append(
                    Request(pairwise_token_messages(messages, a, b), max_tokens=1, logprobs=True, top_logprobs=depth)
                )
            else:
                base.append(
                    Request(
                        pairwise_messages(messages, a, b),
                        max_tokens=cfg.max_tokens,
                        logprobs=want_logprobs,
                        top_logprobs=depth,
                        response_format=PAIRWISE_SCHEMA if structured else None,
                    )
                )
    return base


def judge_pairs(spec, items: list[tuple[list[dict], str, str]], cache, cfg, tick=None) -> list[dict]:
    """Pairwise rows (without ids) for (messages, first, second) items, each judged in both orders.

    Verdicts are mapped back to "chosen" (the first text of the item), "rejected" (the second) or "tie".
    With `scoring: logprobs` the verdict is one token, A or B, read from its probabilities (close = tie).
    """
    by_token = cfg.scoring == "logprobs"
    want_logprobs = by_token or bool(cfg.logprobs)
    base = pair_requests(spec, items, cfg)
    parse = token_verdict if by_token else (lambda result: json_verdict(result, want_logprobs))
    answers = ask_parsed(
        spec,
        base,
        parse,
        cache,
        cfg.model_copy(update={"parse_retries": 0}) if by_token else cfg,
        f"pairwise {spec.label}",
        tick,
    )
    rows = []
    for k in range(len(items)):
        ab, ba = answers[2 * k], answers[2 * k + 1]
        (w_ab, p_ab, a_ab), (w_ba, p_ba, a_ba) = ab["value"] or (None, None, None), ba["value"] or (None, None, None)
        v_ab = None if w_ab is None else {"A": "chosen", "B": "rejected", "tie": "tie"}.get(w_ab)
        v_ba = None if w_ba is None else {"A": "rejected", "B": "chosen", "tie": "tie"}.get(w_ba)
        errors = [f"{order}: {a['error']}" for order, a in (("ab", ab), ("ba", ba)) if a["value"] is None]
        rows.append(
            {
                "verdict_ab": v_ab,
                "verdict_ba": v_ba,
                "consistent": (v_ab == v_ba) if v_ab and v_ba else None,
                "confidence": pair_confidence(v_ab, v_ba, p_ab, p_ba),
                "raw": json.dumps({"ab": ab["raw"], "ba": ba["raw"]}, ensure_ascii=False),
                "error": "; ".join(errors) or None,
                # P(chosen wins) in each order: A's probability when chosen is shown first, B's when it is second; their
                # mean cancels a constant preference for a position (the calibration measures whether that helps)
                "p_chosen_ab": a_ab,
                "p_chosen_ba": None if a_ba is None else round(1 - a_ba, 6),
            }
        )
    return rows


def pairwise_token_messages(messages: list[dict], a: str, b: str) -> list[dict]:
    user = (
        f"## Conversation\n\n{render_conversation(messages)}\n\n## Response A\n\n{a}\n\n## Response B\n\n{b}\n\n"
        "Better response (A or B):"
    )
    return [{"role": "system", "content": PAIRWISE_TOKEN_SYSTEM}, {"role": "user", "content": user}]


def token_verdict(result: Result) -> tuple[str, float, float]:
    """(winner, its probability share, A's share) from the probabilities of the tokens A and B."""
    probs = token_distribution(result, {"A", "B"})
    share = probs.get("A", 0.0) / sum(probs.values())
    if abs(share - 0.5) < TIE_BAND / 2:
        return "tie", 1 - abs(share - 0.5) * 2, round(share, 6)
    return ("A", share, round(share, 6)) if share > 0.5 else ("B", 1 - share, round(share, 6))


def json_verdict(result: Result, want_logprobs: bool) -> tuple[str, float | None, float | None]:
    """(winner, probability of the verdict token, A's share) of a JSON verdict; the probabilities need logprobs."""
    winner = parse_verdict(result.text)
    p = _verdict_prob(result) if want_logprobs else None
    if p is None:
        return winner, None, None
    return winner, p, {"A": p, "B": 1 - p}.get(winner, 0.5)


# ---------------------------------------------------------------- ensemble agreement and the stage


def same_model_warning(config) -> list[str]:
    """Judges that are also generators: a model grading itself favours its own answers."""
    if config.generate is None:
        return []
    gens = {(g.backend, g.model, tuple(g.base_urls)) for g in config.generate.generators}
    return [j.label for j in config.judge.judges if (j.backend, j.model, tuple(j.base_urls)) in gens]


def score_candidates(spec, items: list[tuple[list[dict], str]], cfg, cache, tick=None) -> list[dict]:
    """Pointwise scores of (messages, response) items by one scorer: an LLM judge's rubric, or a reward model's
    reward."""
    if isinstance(spec, RewardModelSpec):
        return [
            {"aspects": [], "overall": r["overall"], "rationale": None, "raw": None, "error": r["error"]}
            for r in reward_scores(spec, items, cache, f"reward {spec.label}", tick)
        ]
    return judge_candidates(spec, items, cfg.aspects, cache, cfg, tick)


def judge_agreement(judgments: pl.LazyFrame | pl.DataFrame) -> dict:
    """Between every two judges: Spearman correlation of overall scores and share of exact agreement."""
    judges = sorted(judgments.lazy().select(pl.col("judge").unique()).collect()["judge"].to_list())
    out: dict[str, float | None] = {}
    if len(judges) < 2:  # one judge: no table of every score is read
        return out
    judgments = judgments.lazy().select("candidate_id", "judge", "overall").collect()
    wide = judgments.filter(pl.col("overall").is_not_null()).pivot(on="judge", index="candidate_id", values="overall")
    for i, a in enumerate(judges):
        for b in judges[i + 1 :]:
            if a not in wide.columns or b not in wide.columns:
                continue
            both = wide.select(a, b).drop_nulls()
            if both.height >= 2:
                rho = both.select(pl.corr(a, b, method="spearman")).item()
                out[f"agreement_{a}_vs_{b}_spearman"] = None if rho is None or math.isnan(rho) else round(float(rho), 4)
                out[f"agreement_{a}_vs_{b}_exact"] = round(float((both[a] == both[b]).mean()), 4)
    return out


def step(config: Config, run: Run, **_) -> dict:
    """Score the candidates part by part (judge.part_size), each part written as it is done (a restart skips it),
    then the parts become the judgments table; counts are read from it lazily."""
    cfg = config.require("judge")
    labels = [j.label for j in cfg.scorers]
    n_candidates = answered(run.scan("candidates")).select(pl.len()).collect().item()
    for label in same_model_warning(config):
        console.print(
            f"[yellow]warning: judge {label!r} is also a generator; a model tends to prefer its own answers. "
            "Use a different judge model where you can.[/yellow]"
        )
    if not cfg.reward_models:
        for spec in cfg.judges:
            check_spec(spec)
    per_item = [
        1 if isinstance(spec, RewardModelSpec) or cfg.scoring == "json" else len(cfg.aspects) for spec in cfg.scorers
    ]
    settings = cfg.model_dump(mode="json")
    parts, keys, resumed = TableParts(run, "judgments"), [], 0
    cache = run_cache(run.path)
    try:
        with ticker(f"judge {', '.join(labels)}", sum(per_item) * n_candidates) as tick:
            for index, part in enumerate(
                run.parts("candidates", part_size(cfg.part_size, cfg.judges, run.height("candidates")), where=answered)
            ):
                keys.append(content_id("judgments", part["candidate_id"].to_list(), settings)[:12])
                if parts.has(index, keys[-1]):
                    resumed += 1
                    tick(sum(per_item) * part.height, cached=True)
                    continue
                # each part's own messages: a join of the two tables held every prompt in its hash table
                part = part.join(
                    messages_of(run.scan("prompts"), part["prompt_id"]),
                    on="prompt_id",
                    how="inner",
                    maintain_order="left",
                )
                items = [
                    ([{"role": m["role"], "content": m["content"]} for m in messages], t)
                    for messages, t in zip(part["messages"].to_list(), part["text"].to_list(), strict=True)
                ]
                frames = []
                for spec in cfg.scorers:
                    rows = score_candidates(spec, items, cfg, cache, tick)
                    # the table's schema, not inference: a first row of null scores must not make the column null-typed
                    frames.append(
                        pl.DataFrame(
                            [
                                {"candidate_id": c, "judge": spec.label, **r}
                                for c, r in zip(part["candidate_id"], rows, strict=True)
                            ],
                            schema=TABLES["judgments"],
                        )
                    )
                parts.write(index, keys[-1], pl.concat(frames) if frames else empty("judgments"))
    finally:
        cache.close()
    parts.assemble(keys)
    df = run.scan("judgments")
    height, scored = df.select(pl.len(), pl.col("overall").is_not_null().sum()).collect().row(0)
    failed = df.filter(pl.col("overall").is_null())
    counts = {
        "judgments": height,
        "scored": scored,
        "failed": height - scored,
        "judges": len(labels),
        "same_model_judges": len(same_model_warning(config)),
        "parts_resumed": resumed,
    }
    if scored:
        counts["mean_overall"] = round(float(df.select(pl.col("overall").mean()).collect().item()), 4)
    counts.update(judge_agreement(df))
    errors = (
        failed.with_columns(pl.col("error").str.extract(r"^([^:]+: [^:(]{0,40})"))
        .group_by("error")
        .len()
        .sort("len", descending=True)
        .head(3)
        .collect()
    )
    summary("judge", {**counts, **{f"error: {e}": n for e, n in errors.iter_rows()}})
    first_error = failed.select("error").head(1).collect()
    all_calls_failed = (
        height and not scored and failed.select(pl.col("error").str.starts_with("call failed").all()).collect().item()
    )
    if all_calls_failed:  # unparseable answers are answers: kept, not fatal
        raise run.every_call_failed(
            "judge",
            "judgments",
            "judge calls",
            f"the first: {first_error.item()}",
            f"prefab judge --run {run.path}",
            **counts,
        )
    return counts


def local_checkpoints(config: Config) -> dict[str, str]:
    """The fingerprints of the local checkpoints the judges and reward models name (a retrained one makes the stage
    and those after it stale)."""
    section = config.judge
    return local_fingerprints(
        [j.model for j in section.judges] + [r.model for r in section.reward_models] if section else []
    )


STAGE = Stage(name="judge", order=40, step=step, section="judge", settings=JudgeConfig, inputs=local_checkpoints)
