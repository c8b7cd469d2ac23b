"""The line formats prefab writes and reads, as pydantic models: one per export format.

Every exported line is validated against its model before the file is renamed into place, and
`prefab train` validates its input file with the same models, so a bad line is reported by file and
line number instead of failing deep inside a trainer.
"""

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator, model_validator

from pipeline.core.errors import InputError, unreadable
from pipeline.core.jsonl import json_lines


class Line(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Message(Line):
    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=1)


class AssistantMessage(Message):
    role: Literal["assistant"]


def _check_prompt(messages: list[Message]) -> list[Message]:
    if messages[-1].role != "user":
        raise ValueError("a prompt must end with a user message")
    return messages


class _Meta(Line):
    """Provenance carried on TRL/SFT lines; trainers drop columns they do not use."""

    pair_id: str | None = None
    prompt_id: str | None = None
    source: Literal["human", "auto"] | None = None


class TrlDpoChat(_Meta):
    """TRL preference format, conversational, explicit prompt (DPOTrainer, RewardTrainer)."""

    prompt: list[Message] = Field(min_length=1)
    chosen: list[AssistantMessage] = Field(min_length=1, max_length=1)
    rejected: list[AssistantMessage] = Field(min_length=1, max_length=1)

    _prompt = field_validator("prompt")(_check_prompt)

    @model_validator(mode="after")
    def _differ(self):
        if self.chosen[0].content == self.rejected[0].content:
            raise ValueError("chosen and rejected are the same text")
        return self


class TrlDpoText(_Meta):
    """TRL preference format, standard (plain strings), explicit prompt."""

    prompt: str = Field(min_length=1)
    chosen: str = Field(min_length=1)
    rejected: str = Field(min_length=1)

    @model_validator(mode="after")
    def _differ(self):
        if self.chosen == self.rejected:
            raise ValueError("chosen and rejected are the same text")
        return self


class OpenAIInput(Line):
    messages: list[Message] = Field(min_length=1)
    tools: list[dict] = Field(default_factory=list)
    parallel_tool_calls: bool = True

    _prompt = field_validator("messages")(_check_prompt)


class OpenAIDpo(Line):
    """OpenAI preference fine-tuning (method "dpo"): one assistant message on each side."""

    input: OpenAIInput
    preferred_output: list[AssistantMessage] = Field(min_length=1, max_length=1)
    non_preferred_output: list[AssistantMessage] = Field(min_length=1, max_length=1)

    @model_validator(mode="after")
    def _differ(self):
        if self.preferred_output[0].content == self.non_preferred_output[0].content:
            raise ValueError("preferred_output and non_preferred_output are the same text")
        return self


class SftChat(_Meta):
    """Conversational language modeling: the chat ends in the response to learn."""

    messages: list[Message] = Field(min_length=2)

    @field_validator("messages")
    @classmethod
    def _ends_in_assistant(cls, messages):
        if messages[-1].role != "assistant":
            raise ValueError("the chat must end with the assistant response to learn")
        if not any(m.role == "user" for m in messages):
            raise ValueError("the chat has no user message")
        return messages


class SftPromptCompletionChat(_Meta):
    """Prompt/completion, conversational: loss on the completion only (SFTTrainer)."""

    prompt: list[Message] = Field(min_length=1)
    completion: list[AssistantMessage] = Field(min_length=1, max_length=1)

    _prompt = field_validator("prompt")(_check_prompt)


class SftPromptCompletionText(_Meta):
    """Prompt/completion, standard (plain strings): loss on the completion only."""

    prompt: str = Field(min_length=1)
    completion: str = Field(min_length=1)


class _KtoMeta(Line):
    """Provenance of an unpaired row: the candidate it came from."""

    prompt_id: str | None = None
    candidate_id: str | None = None
    source: Literal["human", "auto"] | None = None


class KtoChat(_KtoMeta):
    """TRL unpaired preference format, conversational: label true = desirable (KTOTrainer)."""

    prompt: list[Message] = Field(min_length=1)
    completion: list[AssistantMessage] = Field(min_length=1, max_length=1)
    label: StrictBool  # a JSON true/false, not "true" or 1: a wrong type means a wrong file

    _prompt = field_validator("prompt")(_check_prompt)


class KtoText(_KtoMeta):
    """TRL unpaired preference format, standard (plain strings)."""

    prompt: str = Field(min_length=1)
    completion: str = Field(min_length=1)
    label: StrictBool


KTO_RATIO = (
    1.0,
    4 / 3,
)  # TRL's guidance: desirable_weight*n_desirable / (undesirable_weight*n_undesirable) in this range


def kto_weights(n_desirable: int, n_undesirable: int) -> tuple[float, float]:
    """(desirable_weight, undesirable_weight) for KTOTrainer: 1.0 each when the weighted ratio is already in KTO_RATIO;
    else the smaller side's weight is raised so the ratio is 7/6, the middle of the range (KTO paper, Eq. 8). The
    export states them in the dataset card, the trainer sets them."""
    if not n_desirable or not n_undesirable or KTO_RATIO[0] <= n_desirable / n_undesirable <= KTO_RATIO[1]:
        return 1.0, 1.0
    ratio = n_desirable / n_undesirable
    return (round(7 / 6 / ratio, 3), 1.0) if ratio < 1 else (1.0, round(ratio * 6 / 7, 3))


class _GrpoTruth(Line):
    """What the verifier checks a generated completion against: a reference answer (math) or tests (code)."""

    prompt_id: str | None = None
    reference_answer: str | None = None
    tests: str | None = None

    @model_validator(mode="after")
    def _has_truth(self):
        if not (self.reference_answer or "").strip() and not (self.tests or "").strip():
            raise ValueError(
                "the row has neither a reference_answer nor tests, so the verifier reward has nothing to check"
            )
        return self


class GrpoChat(_GrpoTruth):
    """Prompt set for online RL, conversational prompt plus the verifier's ground truth (GRPOTrainer)."""

    prompt: list[Message] = Field(min_length=1)

    _prompt = field_validator("prompt")(_check_prompt)


class GrpoText(_GrpoTruth):
    """Prompt set for online RL, standard (plain-string prompt) plus the verifier's ground truth."""

    prompt: str = Field(min_length=1)


# what `prefab train` accepts for each method, tried in order
TRAIN_FORMATS = {
    "dpo": [TrlDpoChat, TrlDpoText],
    "reward": [TrlDpoChat, TrlDpoText],  # a reward model learns from the same preference pairs
    "sft": [SftChat, SftPromptCompletionChat, SftPromptCompletionText],
    "kto": [KtoChat, KtoText],
    "grpo": [GrpoChat, GrpoText],
}
EXPORT_FORMAT = {
    "dpo": "trl-dpo",
    "reward": "trl-dpo",
    "sft": "sft",
    "kto": "kto",
    "grpo": "grpo",
}  # the `prefab export --format` of each method


def describe(error: ValidationError) -> str:
    """First problem of a validation error as `field.path: message`."""
    err = error.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    return f"{loc}: {err['msg']}" if loc else err["msg"]


def validate_lines(path: Path, rows: list[dict], model: type[Line]) -> None:
    """Raise ValueError naming the line and field of the first row the model rejects."""
    for i, row in enumerate(rows, 1):
        try:
            model.model_validate(row)
        except ValidationError as e:
            ids = ", ".join(f"{k} {row[k]}" for k in ("pair_id", "prompt_id") if isinstance(row, dict) and row.get(k))
            raise ValueError(f"{path.name} line {i}{f' ({ids})' if ids else ''}: {describe(e)}") from e


def read_jsonl(path: str | Path, method: str) -> tuple[list[dict], type[Line]]:
    """Rows of a training file and the format they are in; InputError naming file:line:field otherwise."""
    path = Path(path)
    if not path.exists():
        raise InputError(
            f"data file {path} does not exist",
            hint="export one first: prefab export --run RUN (files land in RUN/exports/)",
        )
    if path.is_dir():
        raise InputError(f"{path} is a directory, not a JSONL file", hint="pass e.g. runs/demo/exports/dpo_train.jsonl")
    rows = []
    try:
        for i, row, problem in json_lines(path):
            if problem:
                raise InputError(problem, where=f"{path}:{i}", hint="each line must be one JSON object (JSONL)")
            rows.append(row)
    except OSError as e:
        raise unreadable(path, e) from None
    if not rows:
        raise InputError(
            f"{path} holds no examples", where=str(path), hint="re-export with looser selection (prefab export --help)"
        )
    candidates = TRAIN_FORMATS[method]
    keys = set(rows[0]) if isinstance(rows[0], dict) else set()
    matching = [m for m in candidates if {k for k, f in m.model_fields.items() if f.is_required()} <= keys]
    model = next(
        (m for m in matching if _valid(m, rows[0])), matching[0] if matching else None
    )  # chat or standard: the one line 1 fits
    if model is None:
        expected = " or ".join(
            "{" + ", ".join(k for k, f in m.model_fields.items() if f.is_required()) + "}" for m in candidates
        )
        hint = f"export it with `prefab export --format {EXPORT_FORMAT[method]}`"
        if "preferred_output" in keys:
            hint = "this is an OpenAI preference file; " + hint
        raise InputError(
            f"line 1 has keys {sorted(keys)}, not a {method} training format (expected {expected})",
            where=f"{path}:1",
            hint=hint,
        )
    for i, row in enumerate(rows, 1):
        try:
            model.model_validate(row)
        except ValidationError as e:
            raise InputError(
                describe(e),
                where=f"{path}:{i}",
                hint=f"every line must have the shape of line 1 ({model.__name__}); "
                "re-export the file with prefab export",
            ) from None
    return rows, model


def _valid(model: type[Line], row) -> bool:
    try:
        model.model_validate(row)
        return True
    except ValidationError:
        return False


def is_chat(model: type[Line]) -> bool:
    return model in (TrlDpoChat, SftChat, SftPromptCompletionChat, KtoChat, GrpoChat)
