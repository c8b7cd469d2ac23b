"""The labeling section of a run's config (`labeling:`): the push stage's settings, and what pull and the queue read."""

from typing import Literal

from pydantic import Field, model_validator

from pipeline.core.config import Config, Strict

DEFAULT_TARGET = 0.9


class LabelingConfig(Strict):
    dataset: str | None = None  # Argilla dataset name; defaults to the run name
    workspace: str = "prefab"
    guidelines: str = "Pick the response that better serves the user: correct, helpful, honest and safe."
    min_submitted: int = Field(1, ge=1)
    # what annotators see of the judge: nothing (default: the pairs came to people because the judge is unsure, and a
    # shown answer anchors them), its verdict as a visible note without choosing for them, or pre-filled as an answer
    judge_hint: Literal["none", "shown", "prefilled"] = "none"
    suggestions: bool | None = None  # deprecated: true = judge_hint prefilled, false = none
    routes: list[Literal["human", "auto"]] = Field(default_factory=lambda: ["human"])
    tie_rule: Literal["drop", "tie", "judge"] = "drop"
    gold_share: float = Field(0.1, ge=0, lt=1)  # share of the dataset that is gold pairs (from calibrate), unmarked
    # bayesian: a prior on annotator accuracy, the calibrated judge as each pair's prior,
    # gold answers (labeling/posterior.py);
    # dawid_skene: crowd-kit's, weighing annotators by a fitted confusion matrix; majority: vote counts
    aggregation: Literal["bayesian", "dawid_skene", "majority"] = "bayesian"
    # the assumed accuracy of an annotator nothing is known about yet; published single-annotator agreement on
    # preference pairs: 63% with ties and 81% without (MT-Bench), 65.7% against the majority (AlpacaEval)
    prior_accuracy: float = Field(0.7, gt=0.5, lt=1)
    prior_strength: float = Field(10.0, gt=0)  # how many labels' worth of evidence the prior is
    judges_vote: bool = False  # the judges' pairwise verdicts count as one more (weighted) annotator each
    # adaptive: a human pair gets one more label, from someone who has not labeled it, only while its confidence is
    # below target_confidence; fixed: every pair waits for min_submitted labels
    redundancy: Literal["adaptive", "fixed"] = "adaptive"
    target_confidence: float | None = Field(None, gt=0.5, lt=1)  # default: route.target_accuracy, else 0.9
    max_labels_per_pair: int = Field(3, ge=1)
    label_budget: int | None = Field(None, ge=0)  # at most this many human labels on the run's pairs (gold apart)
    min_annotator_accuracy: float = Field(0.7, ge=0, le=1)  # on gold: below it an annotator is flagged
    min_gold_answers: int = Field(5, ge=1)  # gold answers needed before an annotator can be flagged
    flagged: Literal["exclude", "keep"] = (
        "exclude"  # a flagged annotator's labels: dropped, or kept (weighted by reliability)
    )

    @model_validator(mode="after")
    def _legacy_suggestions(self):
        if self.suggestions is not None and "judge_hint" not in self.model_fields_set:
            self.judge_hint = "prefilled" if self.suggestions else "none"
        return self


def labeling_target(config: Config) -> float:
    """The confidence an adaptive human pair must reach before it leaves the queue."""
    labeling = config.section("labeling") or LabelingConfig()
    if labeling.target_confidence is not None:
        return labeling.target_confidence
    return config.route.target_accuracy if config.route and config.route.target_accuracy else DEFAULT_TARGET
