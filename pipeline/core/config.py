"""One YAML file per run, validated with pydantic before any work starts.

Errors name the file, the line, the key path in the YAML and a hint (the closest valid key for a typo).
Secrets are referenced by environment-variable name (`api_key_env`), never stored.
"""

import difflib
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from pipeline.core import registry
from pipeline.core.errors import ConfigError, unreadable

EMBEDDED_LLM = "embedded:smollm2"
EMBEDDED_EMBEDDER = "embedded:all-minilm-l6-v2"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def distinct(values: list, field: str, what: str, fix: str) -> None:
    """Refuse a value that keys a table or an id twice: the second would silently merge with (or overwrite) the
    first."""
    for i, value in enumerate(values):
        if value in values[:i]:
            raise ValueError(
                f"{field}[{values.index(value)}] and {field}[{i}] share the {what} {value!r}, "
                f"which keys their rows in the run's tables: {fix}"
            )


class RayConfig(Strict):
    """Run a local model stage on a Ray cluster (pipeline/models/ray_cluster.py): `replicas` actors, each loading the
    model once and answering whole batches, with the same answers as a local run."""

    # auto: the cluster `ray start` made on this machine; HOST:6379 on the cluster's network; ray://HOST:10001 (Ray
    # Client) from elsewhere; local: the Ray this process already joined, else a new one on this machine alone
    address: str = "auto"
    replicas: int = Field(1, ge=1)
    num_gpus: float = Field(0, ge=0)  # per replica: 1 puts one replica on each GPU (0.5: two to a GPU)
    num_cpus: float = Field(1, ge=0)  # per replica; on CPU also its torch threads


class ModelSpec(Strict):
    """An LLM used as generator or judge, answered by the backend `backend` names (pipeline/core/registry.py).

    Some settings belong to one backend (each declares its own: pipeline/models/backends.py); set on a model of
    another backend they would be ignored, so they are refused, naming the backend they belong to."""

    name: str | None = None  # label used in tables; defaults to `model`
    backend: str = "transformers"  # openai, transformers, or one a package registers
    model: str = EMBEDDED_LLM
    # openai backend
    base_url: str | list[str] | None = None  # several URLs spread the load
    api_key_env: str | None = None  # name of the env var holding the key
    concurrency: int = Field(16, ge=1, le=4096)
    rpm: float | None = Field(None, gt=0)  # requests per minute
    tpm: float | None = Field(None, gt=0)  # tokens per minute
    timeout: float = Field(60.0, gt=0)
    max_retries: int = Field(5, ge=0, le=50)
    mode: Literal["realtime", "batch"] = (
        "realtime"  # batch: the provider's Batch API (cheaper, answers within batch_window)
    )
    batch_poll_s: float = Field(30.0, gt=0)  # seconds between status checks of submitted batches
    batch_window: str = "24h"  # completion_window asked of the provider (OpenAI accepts only 24h)
    batch_max_requests: int = Field(
        50_000, ge=1
    )  # requests per batch file (OpenAI's limit; a file also stays under 190 MB)
    # transformers backend
    batch_size: int = Field(8, ge=1)
    device: str | None = None  # cpu, cuda, cuda:1...
    ray: RayConfig | None = None  # run the model on a Ray cluster's replicas instead of in this process
    # any backend
    price_per_mtok_in: float = Field(0.0, ge=0)  # USD per million prompt tokens
    price_per_mtok_out: float = Field(0.0, ge=0)  # USD per million completion tokens
    # for `prefab plan`'s token counts: a local tokenizer dir or embedded:smollm2 (default: the model's own on
    # transformers)
    tokenizer: str | None = None

    @property
    def label(self) -> str:
        return self.name or self.model

    @property
    def base_urls(self) -> list[str]:
        if self.base_url is None:
            return []
        return [self.base_url] if isinstance(self.base_url, str) else list(self.base_url)

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, v):
        try:
            registry.backend(v)
        except ConfigError as e:
            raise ValueError(f"{e.message}; {e.hint}") from None
        return v

    @model_validator(mode="after")
    def _check_backend(self):
        mine = registry.backend(self.backend)
        for name, other in registry.backends().items():
            for field in sorted(other.fields - mine.fields):
                if getattr(self, field) != type(self).model_fields[field].default:
                    raise ValueError(
                        f"`{field}` is a setting of the {name} backend, and this model's backend is {self.backend}: "
                        f"remove `{field}`, or set `backend: {name}`"
                    )
        if self.backend == "openai" and self.model.startswith("embedded:"):
            raise ValueError("the openai backend needs a served model name in `model`, not an embedded one")
        return self

    def on_backend(self, new: str, /, **update):
        """This model moved to the backend `new`, with `update` applied: the settings only its old backend reads go
        back to their defaults (the new one would refuse them)."""
        dropped = registry.backend(self.backend).fields - registry.backend(new).fields
        return type(self).model_validate({**self.model_dump(exclude=dropped), **update, "backend": new})


class GeneratorSpec(ModelSpec):
    temperatures: list[float] = Field(default_factory=lambda: [0.7], min_length=1)
    n: int = Field(1, ge=1, le=64)  # samples per temperature
    max_tokens: int = Field(256, ge=1)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = 0
    stop: list[str] = Field(default_factory=list)

    @field_validator("temperatures")
    @classmethod
    def _temps(cls, v):
        for t in v:
            if not 0 <= t <= 2:
                raise ValueError(f"temperature {t} is outside 0..2")
        distinct(v, "temperatures", "temperature", "list each once and raise `n:` for more samples at one temperature")
        return v


class IngestConfig(Strict):
    paths: list[str] = Field(min_length=1)  # files, globs, saved HF dataset dirs, or hf:NAME
    format: Literal["auto", "jsonl", "csv", "parquet", "hf"] = "auto"
    prompt_column: str | None = None  # the prompt column, a text or a chat (default: prompt/instruction/question/text)
    messages_column: str | None = None  # chat column (default: messages/conversation)
    category_column: str | None = None
    answer_column: str | None = (
        None  # reference answer for the verify stage (default: reference_answer/answer/final_answer)
    )
    tests_column: str | None = None  # Python tests for the verify stage (default: tests/test_code/unit_tests)
    system_prompt: str | None = None
    split: str = "train"  # HF datasets
    skip_bad_rows: bool = False
    limit: int | None = Field(None, ge=1)


class DedupConfig(Strict):
    enabled: bool = True
    semantic: bool = True
    threshold: float = Field(0.95, gt=0, le=1)  # cosine above which two prompts are duplicates
    clusters: int | None = Field(8, ge=1)
    max_per_cluster: int | None = Field(None, ge=1)  # at most this many prompts per topic cluster
    target_size: int | None = Field(None, ge=1)  # keep about this many prompts, balanced across clusters
    keep_sources: list[str] = Field(
        default_factory=list
    )  # input files whose prompts are never sampled out (duplicates still go)
    seed: int = 0  # k-means and cluster sampling


class GenerateConfig(Strict):
    generators: list[GeneratorSpec] = Field(min_length=1)
    part_size: int = Field(2000, ge=1)  # prompts per part written as the stage goes (its memory; what a restart skips)

    @field_validator("generators")
    @classmethod
    def _distinct(cls, v):
        distinct(
            [g.label for g in v],
            "generators",
            "name",
            "set a distinct `name:` on each (one without a name is named by its `model`), "
            "or merge them into one generator",
        )
        return v


class AspectSpec(Strict):
    name: str
    description: str = ""
    weight: float = Field(1.0, ge=0)
    # int | float: 5 stays 5 and 5.0 stays 5.0 through the run's config snapshot, so the rubric a judge is shown (and so
    # its cache key) is the same whether a stage runs from the YAML or from the snapshot (`prefab judge --run`)
    min: int | float = 1
    max: int | float = 5


class RewardModelSpec(Strict):
    """A reward model: a sequence-classification model with one output (TRL's RewardTrainer, `prefab train reward`,
    or any other), read from a local folder or, online, a hub name; batched, on GPU when present."""

    name: str | None = None  # label in tables; defaults to `model`
    model: str
    batch_size: int = Field(16, ge=1)
    device: str | None = None
    max_length: int = Field(1024, ge=8)  # tokens kept per scored text: the last ones, where the score is read

    @property
    def label(self) -> str:
        return self.name or self.model


class JudgeConfig(Strict):
    """LLM judges score each candidate on a rubric and, with `pairwise`, judge pairs in both orders. With
    `reward_models`, the reward models give the pointwise scores instead (their rewards, on their own scale,
    cannot be averaged with a rubric's), and the LLM judges, if pairwise, only judge pairs."""

    judges: list[ModelSpec] = Field(default_factory=lambda: [ModelSpec()])
    reward_models: list[RewardModelSpec] = Field(default_factory=list)
    aspects: list[AspectSpec] = Field(
        default_factory=lambda: [
            AspectSpec(name="helpfulness"),
            AspectSpec(name="honesty"),
            AspectSpec(name="instruction_following"),
            AspectSpec(name="truthfulness"),
        ]
    )
    pairwise: bool = True
    max_tokens: int = Field(512, ge=1)
    parse_retries: int = Field(2, ge=0, le=10)
    structured_output: bool = True  # send a JSON schema as response_format (openai backend)
    temperature: float = Field(0.0, ge=0, le=2)  # first attempt; retries sample at retry_temperature
    retry_temperature: float = Field(0.7, ge=0, le=2)
    seed: int = 0  # retries use seed + attempt, so the call cache does not return the same bad answer
    logprobs: bool = False  # ask for token logprobs in pairwise judging (confidence), where the backend has them
    # json: a JSON answer with a rationale per aspect; logprobs: one token per aspect, the score weighted by the
    # probabilities of the scale's digits (G-Eval style; always parseable, for small local judges; no rationale)
    scoring: Literal["json", "logprobs"] = "json"
    part_size: int = Field(
        2000, ge=1
    )  # candidates per part written as the stage goes (its memory; what a restart skips)

    @field_validator("judges")
    @classmethod
    def _distinct_judges(cls, v):
        distinct(
            [j.label for j in v],
            "judges",
            "name",
            "set a distinct `name:` on each (one without a name is named by its `model`)",
        )
        return v

    @model_validator(mode="after")
    def _distinct_scorers(self):
        distinct(
            [j.label for j in self.judges] + [r.label for r in self.reward_models],
            "judges and reward_models",
            "name",
            "set a distinct `name:` on each (one without a name is named by its `model`)",
        )
        return self

    @property
    def scorers(self) -> list:
        """Who gives the pointwise scores: the reward models when there are any, else the LLM judges."""
        return list(self.reward_models) or list(self.judges)

    @field_validator("aspects")
    @classmethod
    def _distinct_aspects(cls, v):
        if not v:
            raise ValueError("at least one aspect is needed")
        distinct([a.name for a in v], "aspects", "name", "aspects need distinct names; rename or merge one")
        return v

    @model_validator(mode="after")
    def _check_rubric(self):
        for a in self.aspects:
            if not a.min < a.max:
                raise ValueError(f"aspect {a.name!r}: min {a.min:g} must be below max {a.max:g}")
        if sum(a.weight for a in self.aspects) <= 0:
            raise ValueError("at least one aspect needs a weight above 0")
        if self.scoring == "logprobs":
            for a in self.aspects:
                if not (float(a.min).is_integer() and float(a.max).is_integer() and 0 <= a.min and a.max <= 9):
                    raise ValueError(
                        f"aspect {a.name!r}: scoring: logprobs needs a scale of whole numbers within 0..9 "
                        f"(one token per score), got {a.min:g}..{a.max:g}"
                    )
        return self


class EmbedConfig(Strict):
    model: str = EMBEDDED_EMBEDDER
    batch_size: int = Field(64, ge=1)
    device: str | None = None
    ray: RayConfig | None = None  # encode on a Ray cluster's replicas (the embed stage and dedup's prompt vectors)
    near_identical: float = Field(
        0.98, gt=0, le=1
    )  # cosine at which two candidates of a prompt are flagged near-identical
    part_size: int = Field(2000, ge=1)  # prompts (with their candidates) per part written as the stage goes


class VerifyConfig(Strict):
    """Math: each candidate's final answer checked against its prompt's reference answer (`answer_column` in ingest)
    with Hugging Face's math-verify. Code: each candidate's code run against its prompt's tests (`tests_column`) in
    the sandbox (pipeline/sandbox/bwrap.py); correct when every test passes. Prompts with neither are not checked.

    `mode` says how the result meets the judge when pairs are made:
    - prefer: a prompt with a correct and an incorrect candidate gets verified pairs (correct chosen, incorrect
      rejected; `pair.strategy` says which), routed `auto` with reason `verified`: no judge and no person decides them.
      Other prompts are paired by the judge as usual;
    - only: verified pairs alone; prompts without one get no pair (no judge needed);
    - off: results are recorded, pairs come from the judge alone (to compare the judge with the verifier).
    """

    mode: Literal["prefer", "only", "off"] = "prefer"
    # math-verify's own per-call limit (SIGALRM, whole seconds) on extracting an answer and on comparing two; a check
    # that runs over is recorded as an error, never as incorrect
    timeout_s: int = Field(5, ge=1, le=600)
    float_rounding: int = Field(6, ge=0, le=15)  # decimals compared
    reject_unparseable: bool = True  # a candidate with no final answer may be the rejected side of a verified pair
    # code: the sandbox's limits per candidate, and how many sandboxes run at once (default: one per core)
    code_wall_s: float = Field(10.0, gt=0, le=600)
    code_cpu_s: int = Field(5, ge=1, le=600)
    code_memory_mb: int = Field(512, ge=64)
    code_workers: int | None = Field(None, ge=1)


class PairConfig(Strict):
    strategy: Literal["best_vs_worst", "best_vs_random", "all_above_margin"] = "best_vs_worst"
    min_margin: float = Field(0.0, ge=0)
    min_chosen_score: float | None = None
    max_similarity: float | None = Field(None, gt=0, le=1)
    seed: int = 0


class CalibrateConfig(Strict):
    """Gold pairs (human-labeled) on which every configured judge is measured before routing."""

    gold: list[str] = Field(min_length=1)  # TRL preference files (JSONL/CSV/Parquet): prompt, chosen, rejected
    format: Literal["auto", "jsonl", "csv", "parquet"] = "auto"
    prompt_column: str | None = None  # default: prompt/instruction/question/text (text or a chat)
    messages_column: str | None = None
    chosen_column: str = "chosen"
    rejected_column: str = "rejected"
    source_column: str | None = None  # groups the results; default `source`, else the file name
    category_column: str | None = None
    limit: int | None = Field(None, ge=1)  # at most this many gold pairs per file (a seeded sample)
    seed: int = 0


class RouteConfig(Strict):
    margin_threshold: float = Field(1.0, ge=0)  # below this judge margin a pair goes to humans (without a target)
    # with a calibration on gold: the threshold of `signal` above which auto-labeled pairs are right at least this
    # often (lower bound of the 95% interval); below it, pairs go to people
    target_accuracy: float | None = Field(None, gt=0, lt=1)
    signal: Literal["best", "margin", "pairwise", "ensemble"] = "best"  # best: the largest gold coverage at the target
    audit_share: float = Field(0.05, ge=0, le=1)  # random share sent to humans anyway
    human_budget: int | None = Field(None, ge=0)  # at most this many human pairs, most uncertain first
    seed: int = 0


class Config(Strict):
    """The root of a run's config. Its sections are those of the registered stages (config_model assembles them);
    pipeline's own are declared here as well, so that its code and type checker know them."""

    run: str  # run directory
    seed: int = 0
    stages: list[str] | None = None  # default: every configured stage in pipeline order
    budget_usd: float | None = Field(
        None, ge=0
    )  # the most this run's model calls may cost (model prices); `prefab plan` estimates it
    ingest: IngestConfig
    dedup: DedupConfig | None = None
    generate: GenerateConfig | None = None
    judge: JudgeConfig | None = None
    embed: EmbedConfig | None = None
    verify: VerifyConfig | None = None
    pair: PairConfig | None = None
    calibrate: CalibrateConfig | None = None
    route: RouteConfig | None = None

    # where the YAML lives: relative paths in it are resolved from there
    source: Path | None = Field(None, exclude=True)

    def section(self, name: str):
        """A section by name (None where the config has none), for the sections other packages register."""
        return getattr(self, name, None)

    def require(self, section: str, hint: str | None = None):
        """The section a stage needs, or a ConfigError saying how to add it (every stage's step asks here)."""
        value = self.section(section)
        if value is None:
            where = str(self.source) if self.source else f"{Path(self.run) / 'manifest.json'} (the run's config)"
            raise ConfigError(
                f"the config has no `{section}:` section",
                where=where,
                hint=hint
                or f"add `{section}:` to the config (`{section}: {{}}` takes the defaults, see "
                "data/configs/demo.yaml) and pass it with --config CONFIG.yaml",
            )
        return value

    def resolve(self, path: str) -> Path:
        p = Path(path)
        if p.is_absolute() or self.source is None:
            return p
        here = Path.cwd() / p
        return here if here.exists() else self.source.parent / p


@cache
def config_model() -> type[Config]:
    """The root config model with one section per registered stage (pipeline/core/stage.py), validated by the
    stage's settings model: a package's stage brings its own section; a key no stage reads is refused."""
    fields: dict = {}
    for stage in registry.stages().values():
        if stage.section and stage.settings:
            fields[stage.section] = (stage.settings, ...) if stage.required else (stage.settings | None, None)
    return create_model("Config", __base__=Config, **fields)


def load_config(path: str | Path) -> Config:
    """Read and validate a run config; raise ConfigError naming file, line and key."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(
            f"config file {path} does not exist", hint="pass the path of a YAML file, e.g. data/configs/demo.yaml"
        )
    try:
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except UnicodeDecodeError as e:
        raise ConfigError(f"not valid UTF-8 ({e.reason} at byte {e.start})", where=str(path)) from e
    except OSError as e:
        raise unreadable(path, e, ConfigError) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(
            f"not valid YAML: {getattr(e, 'problem', e)}", where=where, hint="check indentation and quoting"
        ) from e
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping of sections (run:, ingest:, generate:, ...)", where=str(path))
    try:
        config = config_model().model_validate(data)
    except ValidationError as e:
        raise _config_error(path, node, e) from None
    config.source = path.resolve()
    _check_secrets(config, path, node)
    return config


def _config_error(path: Path, node, error: ValidationError) -> ConfigError:
    lines = []
    first_line = None
    hint = None
    errors: list[dict[str, Any]] = [
        dict(e, loc=[p for p in e["loc"] if not (isinstance(p, str) and "[" in p)]) for e in error.errors()
    ]  # drop union tags
    typos = set()  # (parent, valid key) pairs explained by a misspelt key: their "missing" is noise
    for err in errors:
        if err["type"] == "extra_forbidden":
            parent = _model_at(config_model(), err["loc"][:-1])
            close = difflib.get_close_matches(str(err["loc"][-1]), list(parent.model_fields) if parent else [], n=1)
            if close:
                typos.add((tuple(err["loc"][:-1]), close[0]))
    errors.sort(key=lambda e: e["type"] != "extra_forbidden")
    for err in errors:
        loc = err["loc"]
        if err["type"] == "missing" and (tuple(loc[:-1]), loc[-1]) in typos:
            continue
        key = ".".join(str(p) for p in loc)
        line = line_of(node, loc)
        first_line = first_line or line
        where = f"line {line}, " if line else ""
        if err["type"] == "extra_forbidden":
            parent = _model_at(config_model(), loc[:-1])
            options = list(parent.model_fields) if parent else []
            close = difflib.get_close_matches(str(loc[-1]), options, n=1)
            msg = f"{where}{key}: unknown key"
            if close:
                msg += f" (did you mean {close[0]!r}?)"
                hint = hint or f"rename {loc[-1]!r} to {close[0]!r}"
            elif options:
                msg += f"; valid keys here: {', '.join(options)}"
        elif err["type"] == "missing":
            msg = f"{where}{key}: required key is missing"
            hint = hint or f"add `{loc[-1]}:` to the config"
        else:
            got = err.get("input")  # a validator's message names the items: a whole list or section repeated is noise
            quiet = err["type"] == "value_error" and isinstance(got, (list, dict))
            msg = f"{where}{key}: {err['msg']}" + ("" if quiet else f" (got {got!r})")
        lines.append(msg)
    return ConfigError(
        "invalid config:\n  " + "\n  ".join(lines),
        where=f"{path}:{first_line}" if first_line else str(path),
        hint=hint or "see data/configs/demo.yaml for a complete example",
    )


def line_of(node, loc) -> int | None:
    """1-based line of the YAML node at loc (or of its closest existing parent)."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == str(part):
                    line, node = k.start_mark.line + 1, v
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _model_at(model, loc):
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part)) if hasattr(model, "model_fields") else None
        if field is None:
            return None
        model = _inner_model(field.annotation)
        if model is None:
            return None
    return model


def _inner_model(annotation):
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _inner_model(arg)
        if found:
            return found
    return None


def _check_secrets(config: Config, path: Path, node) -> None:
    """A key written into the config would be copied into the run directory: refuse it."""
    for section, specs in (
        ("generate", config.generate and config.generate.generators),
        ("judge", config.judge and config.judge.judges),
    ):
        for i, spec in enumerate(specs or []):
            env = spec.api_key_env
            if env and (env.startswith("sk-") or len(env) > 64):
                line = line_of(node, [section, "generators" if section == "generate" else "judges", i, "api_key_env"])
                raise ConfigError(
                    f"{section}[{i}].api_key_env looks like a key itself, not a variable name",
                    where=f"{path}:{line}",
                    hint="export the key as e.g. OPENAI_API_KEY and write `api_key_env: OPENAI_API_KEY`",
                )
