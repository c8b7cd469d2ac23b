"""`prefab check CONFIG`: will the config's models and servers work? Asked before a run spends anything.

For each model on an OpenAI-compatible server (each of its base_urls): the server is reachable, takes the key,
serves the model (`/v1/models`), answers a chat completion; for a judge, the server takes the json_schema
`response_format` the judge sends (else what prefab falls back to) and returns logprobs where the judge scores
by them; the Batch API where `mode: batch`. The completions go through the backend's own call (the request a
run makes, answered without the call cache) with no retries, so what fails here fails in the run. Local models
(generators, judges, reward models, the embedder) are loaded as the stages load them. Other packages add checks
under the entry point group `prefab.checks` (labeling/: its server answers).

Each check is a row: ok, warn (the run works, in a lesser way the detail names) or fail (with its fix).
"""

from dataclasses import dataclass
from typing import Literal

from pipeline.core import registry
from pipeline.core.errors import ModelError, PrefabError
from pipeline.models import llm_transformers, ray_cluster, reward
from pipeline.models.backends import Request, Result
from pipeline.models.openai_api.responses import error_message

Status = Literal["ok", "warn", "fail"]
# (check, status, detail, fix) of a row whose subject and where the caller knows; detail and fix may be left out
CheckRow = tuple[str, Status] | tuple[str, Status, str] | tuple[str, Status, str, str]

SAMPLE = (
    [{"role": "user", "content": "What is 2 + 2?"}],
    "2 + 2 = 4.",
)  # the (conversation, response) judges are asked about


@dataclass(frozen=True)
class Check:
    """One row of the check table: what was checked, on what, and if it failed, how to fix it."""

    subject: str  # "judge gpt-4o-mini", "embedder embedded:all-minilm-l6-v2", "labeling server"
    where: str  # a server URL, a device, a path
    check: str
    status: Status
    detail: str = ""
    fix: str = ""


def run_checks(config) -> list[Check]:
    """Every check the config calls for, in the order a run meets them."""
    rows: list[Check] = []
    generators = config.generate.generators if config.generate else []
    judge = config.judge
    for spec in generators:
        rows += model_checks(spec, f"generator {spec.label}", None)
    for spec in judge.judges if judge else []:
        rows += model_checks(spec, f"judge {spec.label}", judge)
    for spec in judge.reward_models if judge else []:
        rows += _reward_model(spec)
    if config.embed is not None or (
        config.dedup is not None and config.dedup.enabled and (config.dedup.semantic or config.dedup.clusters)
    ):
        rows += _embedder(config)
    for check in registry.checks():
        rows += check(config)
    return rows


def model_checks(spec, subject: str, judge) -> list[Check]:
    """The rows of one generator or judge (`judge`: the judge section, for a judge)."""
    chosen = registry.backend(spec.backend)
    try:
        chosen.check(spec)  # what the run checks first: the key's variable, a Ray cluster, a local model's path
    except PrefabError as e:
        return [Check(subject, _where(spec), "configured", "fail", e.message, e.hint or "")]
    if spec.backend == "openai":
        rows = []
        for url in spec.base_urls or [None]:
            rows += _server(spec.model_copy(update={"base_url": url, "max_retries": 0}), subject, judge)
        return rows
    if spec.backend == "transformers" and spec.ray is None:
        return [
            _load(subject, spec.model, "loads", lambda: f"on {llm_transformers.load_model(spec.model, spec.device)[2]}")
        ]
    return [Check(subject, _where(spec), "configured", "ok", f"backend {spec.backend} accepts the model")]


def _where(spec) -> str:
    if spec.backend == "openai":
        return ", ".join(spec.base_urls) or "https://api.openai.com/v1"
    return spec.backend if spec.ray is None else f"{spec.backend} on Ray {spec.ray.address or 'local'}"


def _server(spec, subject: str, judge) -> list[Check]:
    """The checks of one model on one base_url; a check that fails stops the ones that need it."""
    import openai  # start-up: openai

    from pipeline.models.openai_api.backend import api_key  # start-up: asyncio, rich.console, rich.progress, rich.table

    with openai.OpenAI(base_url=spec.base_url, api_key=api_key(spec), max_retries=0, timeout=spec.timeout) as client:
        where = str(client.base_url).rstrip("/")
        rows: list[Check] = []

        def row(check: str, status: Status, detail: str = "", fix: str = "") -> None:
            rows.append(Check(subject, where, check, status, detail, fix))

        key_fix = f"set {spec.api_key_env or 'OPENAI_API_KEY'} to a key this server accepts" + (
            "" if spec.api_key_env else " (or name another variable in the model's `api_key_env:`)"
        )
        served: list[str] | None
        try:
            models = [model.id for model in client.models.list()]
        except openai.APIConnectionError as e:  # timeouts too
            row(
                "reachable",
                "fail",
                _cause(e),
                f"start the server, or correct `base_url:` (prefab asked {where}/models)",
            )
            return rows
        except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
            row("reachable", "ok")
            row("key accepted", "fail", f"HTTP {e.status_code}: {error_message(e)}", key_fix)
            return rows
        except openai.APIStatusError as e:  # a server without /v1/models: the chat completion below tells
            served = None
            row("reachable", "ok")
            row("model served", "warn", f"/models answered HTTP {e.status_code}: {error_message(e)}; not listed")
        else:
            served = models
            row("reachable", "ok")
            row("key accepted", "ok")
            if spec.model in models:
                row("model served", "ok", spec.model)

        answer = _ask(spec, Request(SAMPLE[0], max_tokens=16, temperature=0.0))
        if isinstance(answer, Exception):
            cause = answer.__cause__
            if isinstance(cause, (openai.AuthenticationError, openai.PermissionDeniedError)):
                row(
                    "key accepted",
                    "fail",
                    f"the chat completion answered HTTP {cause.status_code}: {error_message(cause)}",
                    key_fix,
                )
            else:
                listed = f"; it lists {', '.join(served)}" if served else ""
                fix = (
                    f"set `model: {served[0]}`"
                    if served and len(served) == 1
                    else "set `model:` to a name the server lists"
                    if served
                    else "set `model:` to a name the server serves"
                )
                row("model served", "fail", f"{answer.message}{listed}", fix)
            return rows
        if answer.error:
            if served is not None and spec.model not in served:
                row(
                    "model served", "warn", f"not among {', '.join(served)} at /models; the chat completion below tells"
                )
            row(
                "chat completion",
                "fail",
                answer.error,
                "see the server's log; `prefab run` records this error on every call",
            )
            return rows
        if served is not None and spec.model not in served:  # llama.cpp's server answers any name with the model it has
            row(
                "model served",
                "warn",
                f"not among {', '.join(served) or 'none'} at /models, but the server answers for it",
            )
        assert answer.text is not None  # an answer without error has its text (openai_api.responses.completion_result)
        row(
            "chat completion",
            "ok",
            f"{answer.text[:40]!r} in {answer.latency_s:.2f}s" if answer.latency_s else repr(answer.text[:40]),
        )
        if judge is not None:
            rows += [Check(subject, where, *r) for r in _judge_checks(spec, judge)]
        if spec.mode == "batch":
            rows += [Check(subject, where, *r) for r in _batch_api(client, spec)]
        return rows


def _judge_checks(spec, judge) -> list[CheckRow]:
    """(check, status, detail, fix) for what a judge asks beyond a plain completion: its answer's JSON schema,
    logprobs."""
    from pipeline.stages.judge import (  # start-up: polars, pydantic, rich.console, rich.progress, rich.table, yaml
        parse_rubric,
        scoring_requests,
        token_distribution,
    )

    rows: list[CheckRow] = []
    if judge.scoring == "json" and judge.structured_output:
        answer = _ask(spec, scoring_requests(spec, [SAMPLE], judge.aspects, judge)[0])
        if isinstance(answer, Exception) or answer.error:
            reason = answer.message if isinstance(answer, Exception) else answer.error
            rows.append(
                (
                    "structured output",
                    "fail",
                    f"a json_schema response_format was refused: {reason}",
                    "set `structured_output: false` under `judge:` (prefab then asks for the JSON in the prompt "
                    f"and parses the answer, asking again up to parse_retries={judge.parse_retries} times), or serve "
                    "the judge with structured outputs on (vLLM, llama.cpp's llama-server)",
                )
            )
        else:
            try:
                parse_rubric(answer.text, judge.aspects)
                rows.append(("structured output", "ok", "answered JSON of the rubric's schema"))
            except ValueError as e:
                rows.append(
                    (
                        "structured output",
                        "warn",
                        f"taken, but the answer is not the rubric's JSON ({e}): the server "
                        "ignores the schema; prefab parses the answer and asks again up to "
                        f"{judge.parse_retries} times",
                    )
                )
    if judge.scoring == "logprobs" or judge.logprobs:
        by_token = judge.scoring == "logprobs"
        request = scoring_requests(spec, [SAMPLE], judge.aspects, judge.model_copy(update={"scoring": "logprobs"}))[0]
        answer = _ask(spec, request)
        if isinstance(answer, Exception) or answer.error or not answer.logprobs:
            reason = (
                "none in the answer"
                if not isinstance(answer, Exception) and not answer.error
                else answer.message
                if isinstance(answer, Exception)
                else answer.error
            )
            if by_token:
                rows.append(
                    (
                        "logprobs",
                        "fail",
                        f"asked for {request.top_logprobs} per token: {reason}; every judgment needs them",
                        "serve the judge where logprobs are returned (vLLM, llama.cpp's llama-server), or set "
                        "`scoring: json` under `judge:` (a JSON answer per candidate)",
                    )
                )
            else:
                rows.append(
                    ("logprobs", "warn", f"{reason}: pairwise confidence then comes from the two verdicts alone")
                )
        else:
            top = len(answer.logprobs[0]["top_logprobs"])
            aspect = judge.aspects[0]
            try:
                token_distribution(answer, {str(k) for k in range(int(aspect.min), int(aspect.max) + 1)})
                rows.append(("logprobs", "ok", f"{top} alternatives per token"))
            except ValueError as e:
                rows.append(
                    ("logprobs", "warn" if by_token else "ok", f"{top} alternatives per token; on a sample answer: {e}")
                )
    return rows


def _batch_api(client, spec) -> list[CheckRow]:
    """The Batch API is there (listing batches costs nothing); its errors as the batch backend words them."""
    from pipeline.models.openai_api.batch import stops  # start-up: rich.console, rich.progress, rich.table

    try:
        with stops(str(client.base_url), spec):
            client.batches.list(limit=1)
    except ModelError as e:
        return [("batch API", "fail", e.message, e.hint or "")]
    return [("batch API", "ok", "/batches answers")]


def _ask(spec, request: Request) -> Result | ModelError:
    """One completion through the backend's own call: its Result, or the ModelError that would stop a run."""
    got: list[Result] = []
    if spec.backend == "openai":
        spec = spec.model_copy(
            update={"mode": "realtime"}
        )  # the Batch API is checked apart; a probe wants its answer now
    try:
        registry.backend(spec.backend).run(spec, [request], lambda _, result: got.append(result))
    except ModelError as e:
        return e
    return got[0]


def _reward_model(spec) -> list[Check]:
    return [_load(f"reward model {spec.label}", spec.model, "loads", lambda: f"on {reward.load(spec)[2]}")]


def _embedder(config) -> list[Check]:
    from pipeline.stages import (  # start-up: numpy, polars, pydantic, rich.console, rich.progress, rich.table, yaml
        embed,
    )

    name = embed.embed_model(config)
    device = config.embed.device if config.embed else None
    ray = config.embed.ray if config.embed else None
    if ray is not None:
        return [
            _load(
                f"embedder {name}",
                f"Ray {ray.address or 'local'}",
                "cluster reachable",
                lambda: ray_cluster.connect(ray),
            )
        ]
    return [_load(f"embedder {name}", name, "loads", lambda: f"on {embed.load_model(name, device).device}")]


def _load(subject: str, where: str, check: str, load) -> Check:
    """Load a local model as its stage does (`load` returns the row's detail): a row, with the loader's own hint where
    it fails."""
    try:
        detail = load() or ""
    except PrefabError as e:
        return Check(subject, where, check, "fail", e.message, e.hint or "")
    except (OSError, ValueError, RuntimeError) as e:  # what transformers and torch raise for a broken model folder
        return Check(
            subject,
            where,
            check,
            "fail",
            f"{type(e).__name__}: {e}",
            "pass a model directory holding config.json and weights",
        )
    return Check(subject, where, check, "ok", detail)


def _cause(error: BaseException) -> str:
    cause = error.__cause__ or error
    return f"{type(cause).__name__}: {cause}"


def show(rows: list[Check]) -> None:
    """The table of checks, on prefab's console."""
    from rich.table import Table  # start-up: rich.table

    from pipeline.core.progress import console  # start-up: rich.console, rich.progress, rich.table

    table = Table(title="prefab check")
    for column in ("model or server", "where", "check", "result", "detail"):
        table.add_column(column, overflow="fold")
    colour = {"ok": "green", "warn": "yellow", "fail": "red"}
    for r in rows:
        table.add_row(r.subject, r.where, r.check, f"[{colour[r.status]}]{r.status}[/]", r.detail)
    console.print(table)
    for r in rows:  # whole lines too: a narrow terminal or a log folds the table's cells
        if r.status == "warn":
            console.print(
                f"warning: {r.subject} ({r.where}): {r.check}: {r.detail}",
                style="yellow",
                soft_wrap=True,
                markup=False,
                highlight=False,
            )


def problems(rows: list[Check]) -> PrefabError | None:
    """One error listing every failed check with its fix, one line each; None when nothing failed."""
    failed = [r for r in rows if r.status == "fail"]
    if not failed:
        return None
    lines = [f"{r.subject} ({r.where}): {r.check}: {r.detail}" + (f"; fix: {r.fix}" if r.fix else "") for r in failed]
    return PrefabError(f"{len(failed)} problem(s) to fix before a run:\n  " + "\n  ".join(lines))
