"""How likely each human label is right, with a prior on annotator accuracy: a one-coin Bayesian model.

Why not crowd-kit: its models (Dawid-Skene, one-coin, GLAD, MACE) take no prior on an annotator's accuracy and
no per-pair prior, so with one annotator and no gold answers nothing identifies the accuracy and the fit reports
an artifact (a posterior of 1.0 for a single label). This model is small enough to write on numpy/scipy:

- pair i's truth is "chosen" or "rejected", relative to the pair's orientation (the judge's side is "chosen");
  its prior P(chosen) is the judge's confidence calibrated on gold where the run has one (the pairs table's
  `confidence`), else 1/2; a gold pair's truth is known;
- annotator a is right with probability p_a ~ Beta(prior), the same for every label; a wrong label names the other
  side; "tie" and "both_bad" name no side and do not enter (they are resolved by count, apart);
- the annotators' accuracies are drawn from their posterior, the pairs' truths summed out (gold answers and
  agreement with the calibrated judge and with the others move them; where nothing does, they stay as wide as
  the prior); each pair's confidence is its P(right) averaged over the draws, so a label from an annotator nothing
  is known about is as sure as the prior allows, never 1.0.
"""

from dataclasses import dataclass

import numpy as np
import polars as pl
from scipy.special import expit, logit

from pipeline.stages.calibrate import outward

SIDES = ("chosen", "rejected")
CLIP = 1e-3  # a pair prior of exactly 0 or 1 would let no label move it
DRAWS = 400  # posterior draws kept, for confidences and intervals
BURN_IN, THIN = 300, 2  # sweeps dropped at the start (the step is tuned there), then one kept in THIN
LEVEL = 0.90  # the stated intervals


@dataclass(frozen=True)
class Prior:
    """Beta prior on an annotator's accuracy: its mean and its weight in labels."""

    mean: float
    strength: float

    @property
    def alpha(self) -> float:
        return self.mean * self.strength

    @property
    def beta(self) -> float:
        return (1 - self.mean) * self.strength

    def describe(self) -> str:
        return f"Beta({self.alpha:g}, {self.beta:g}), mean {self.mean:.0%}, worth {self.strength:g} labels"


@dataclass
class Fit:
    """The fitted model: tasks (run pairs and gold records), annotators' accuracy draws, pairs' P(chosen)."""

    tasks: list[str]
    workers: list[str]
    accuracy_draws: np.ndarray  # (DRAWS, workers)
    p_chosen: np.ndarray  # per task: posterior P(truth = chosen) under the pair priors as given
    draws: np.ndarray  # (DRAWS, tasks): P(chosen) under each draw (of the refitted pair priors and the accuracies)

    def index(self, pair_ids: list[str]) -> np.ndarray:
        where = {t: i for i, t in enumerate(self.tasks)}
        return np.array([where[p] for p in pair_ids], dtype=np.int64)

    def accuracy(self, worker: str) -> tuple[float, float, float]:
        """An annotator's estimated accuracy: posterior mean and its LEVEL interval."""
        samples = self.accuracy_draws[:, self.workers.index(worker)]
        low, high = np.quantile(samples, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
        return float(samples.mean()), float(low), float(high)

    def stated(self, pair_ids: list[str], preferences: list[str], seed: int = 0) -> dict:
        """Of these pairs resolved as `preferences` (chosen/rejected): the expected share right (their mean confidence)
        and a LEVEL interval for the share that is right. The interval's spread comes from the draws and each label's
        own chance; it is centred on the stated share, since refits on resampled gold are noisier than the fit
        itself."""
        if not pair_ids:
            return {"pairs": 0, "stated": None, "low": None, "high": None}
        idx = self.index(pair_ids)
        chosen = np.array([p == "chosen" for p in preferences])
        stated = float(np.where(chosen, self.p_chosen[idx], 1 - self.p_chosen[idx]).mean())
        right = np.where(chosen, self.draws[:, idx], 1 - self.draws[:, idx])  # (draws, pairs)
        rng = np.random.default_rng(seed)
        realised = (rng.random(right.shape) < right).mean(axis=1)
        low, high = np.quantile(realised - realised.mean(), [(1 - LEVEL) / 2, (1 + LEVEL) / 2]) + stated
        low, high = outward(low, high, len(pair_ids))
        return {"pairs": len(pair_ids), "stated": stated, "low": low, "high": high}


def _sample(
    prior_logits: np.ndarray,
    task_of: np.ndarray,
    worker_of: np.ndarray,
    sign: np.ndarray,
    n_workers: int,
    prior: Prior,
    draws: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Draws of the annotators' accuracies from their posterior with the pairs' truths summed out (random-walk
    Metropolis on each accuracy's logit), and P(chosen) of every pair given each draw. Summing the truths out keeps
    the chain moving where labels say little (one annotator, no gold): sampling truths and accuracies in turn there
    crawls, and an interval from such a chain is too narrow. prior_logits: (replicates, tasks); each sweep takes the
    pair priors of a replicate drawn at random."""
    n_tasks = prior_logits.shape[1]
    says_chosen = sign > 0
    accuracy = np.full(n_workers, prior.mean)
    log_p, log_q = np.log(accuracy), np.log1p(-accuracy)
    # per pair: log P(its labels | truth chosen), log P(its labels | truth rejected)
    if_chosen = np.bincount(
        task_of, weights=np.where(says_chosen, log_p[worker_of], log_q[worker_of]), minlength=n_tasks
    )
    if_rejected = np.bincount(
        task_of, weights=np.where(says_chosen, log_q[worker_of], log_p[worker_of]), minlength=n_tasks
    )
    mine = []  # per annotator: their labels, the pairs they labeled, each label's place among those pairs
    for w in range(n_workers):
        idx = np.flatnonzero(worker_of == w)
        pairs, place = np.unique(task_of[idx], return_inverse=True)
        mine.append((idx, pairs, place))
    step = np.full(n_workers, 0.5)
    kept_accuracy, kept_chosen = np.empty((draws, n_workers)), np.empty((draws, n_tasks))
    for sweep in range(BURN_IN + draws * THIN):
        logits = prior_logits[rng.integers(len(prior_logits))]
        log_chosen, log_rejected = -np.logaddexp(0, -logits), -np.logaddexp(0, logits)  # log pi, log (1 - pi)
        for w, (idx, pairs, place) in enumerate(mine):
            proposal = expit(logit(accuracy[w]) + step[w] * rng.normal())
            new_p, new_q = np.log(proposal), np.log1p(-proposal)
            up = np.where(says_chosen[idx], new_p - log_p[w], new_q - log_q[w])
            down = np.where(says_chosen[idx], new_q - log_q[w], new_p - log_p[w])
            d_chosen, d_rejected = (
                np.bincount(place, weights=up, minlength=len(pairs)),
                np.bincount(place, weights=down, minlength=len(pairs)),
            )
            before = np.logaddexp(log_chosen[pairs] + if_chosen[pairs], log_rejected[pairs] + if_rejected[pairs])
            after = np.logaddexp(
                log_chosen[pairs] + if_chosen[pairs] + d_chosen, log_rejected[pairs] + if_rejected[pairs] + d_rejected
            )
            # the Beta prior with the logit's Jacobian: alpha log p + beta log(1 - p)
            ratio = np.sum(after - before) + prior.alpha * (new_p - log_p[w]) + prior.beta * (new_q - log_q[w])
            accepted = np.log(rng.random()) < ratio
            if accepted:
                accuracy[w], log_p[w], log_q[w] = proposal, new_p, new_q
                if_chosen[pairs] += d_chosen
                if_rejected[pairs] += d_rejected
            if sweep < BURN_IN:  # tune the step towards about 40% accepted
                step[w] *= 1.1 if accepted else 0.93
        k, offset = divmod(sweep - BURN_IN, THIN)
        if sweep >= BURN_IN and offset == 0:
            kept_accuracy[k], kept_chosen[k] = accuracy, expit(logits + if_chosen - if_rejected)
    return kept_accuracy, kept_chosen


def fit(
    labels: pl.DataFrame,
    prior: Prior,
    pair_prior: dict[str, float] | None = None,
    truth: dict[str, str] | None = None,
    *,
    prior_draws: dict[str, np.ndarray] | None = None,
    seed: int = 0,
) -> Fit:
    """Fit on labels (pair_id, annotator, label).

    pair_prior: P(chosen) per pair (1/2 where absent); truth: known answers (gold). prior_draws: per pair, the same
    probability under each of several refits of the judge's calibration: a second chain takes them, so the stated
    interval carries how little gold the calibration rests on, as well as the annotators' uncertainty.
    """
    pair_prior, truth = pair_prior or {}, truth or {}
    directional = labels.filter(pl.col("label").is_in(SIDES))
    tasks = sorted(set(labels["pair_id"].to_list()) | set(truth))
    workers = sorted(set(labels["annotator"].to_list()))
    t_index, w_index = {t: i for i, t in enumerate(tasks)}, {w: i for i, w in enumerate(workers)}
    task_of = np.array([t_index[t] for t in directional["pair_id"].to_list()], dtype=np.int64)
    worker_of = np.array([w_index[w] for w in directional["annotator"].to_list()], dtype=np.int64)
    sign = (
        np.where(np.array(directional["label"].to_list(), dtype=object) == "chosen", 1.0, -1.0)
        if directional.height
        else np.zeros(0)
    )

    def logits(values: np.ndarray) -> np.ndarray:
        out = logit(np.clip(values, CLIP, 1 - CLIP))
        for t, answer in truth.items():
            out[..., t_index[t]] = np.inf if answer == "chosen" else -np.inf
        return out

    rng = np.random.default_rng(seed)
    point = logits(np.array([[pair_prior.get(t, 0.5) for t in tasks]]))
    accuracy, at_point = _sample(point, task_of, worker_of, sign, len(workers), prior, DRAWS, rng)
    if not prior_draws:
        return Fit(tasks, workers, accuracy, at_point.mean(axis=0), at_point)
    replicates = len(next(iter(prior_draws.values())))
    refits = np.array(
        [prior_draws[t] if t in prior_draws else np.full(replicates, pair_prior.get(t, 0.5)) for t in tasks]
    ).T
    spread_accuracy, spread = _sample(
        logits(refits.reshape(replicates, len(tasks))), task_of, worker_of, sign, len(workers), prior, DRAWS, rng
    )
    return Fit(tasks, workers, spread_accuracy, at_point.mean(axis=0), spread)
