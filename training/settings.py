"""The export and train sections of a run's config (`export:`, `train:`), the settings of those two stages."""

from typing import Literal

from pydantic import Field

from pipeline.core.config import Strict


class ExportConfig(Strict):
    formats: list[Literal["trl-dpo", "openai-dpo", "sft", "kto", "grpo"]] = Field(
        default_factory=lambda: ["trl-dpo", "openai-dpo", "sft"]
    )
    sources: list[Literal["human", "auto"]] = Field(default_factory=lambda: ["human", "auto"])
    min_margin: float = 0.0
    conversational: bool = True
    test_share: float = Field(0.1, ge=0, lt=1)
    max_tokens: int | None = Field(None, ge=1)
    tokenizer: str | None = None
    seed: int = 0
    ties: Literal["drop", "judge"] = "drop"  # a human "tie": drop the pair, or keep the judge's order
    both_bad: Literal["drop", "judge"] = "drop"  # a human "both bad": same choice
    drop_equal: bool = False  # a pair whose two texts are equal: error (default) or drop it
    # drop pairs whose label is less likely right than this: human pairs by their aggregated confidence, auto pairs by
    # their calibrated one (an auto pair without a calibration has no confidence and is dropped when this is set)
    min_confidence: float | None = Field(None, ge=0, le=1)
    out_dir: str | None = None  # default: <run>/exports


class TrainConfig(Strict):
    method: Literal["dpo", "sft", "kto", "grpo", "reward"] = "dpo"
    config: str | None = None  # training/configs/*.yaml
    overrides: dict = Field(default_factory=dict)  # any TRL config field
    rounds: int = Field(1, ge=1, le=20)  # >1: iterative on-policy DPO (`prefab rounds`), a sub-run per round
    evaluate: bool = False  # after training: win rate of the trained model against its base (`prefab eval`)
    eval_prompts: int | None = Field(None, ge=1)  # at most this many held-out prompts
    eval_max_tokens: int = Field(256, ge=1)
