"""Statistics shared by the stages and the apps above them (calibration, label resolution, evaluation)."""

from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    import polars as pl


def series_mean(series: "pl.Series") -> float:
    """The mean of a numeric or boolean Series holding a value, as a float. polars types Series.mean() as any Python
    value or None (a temporal Series's mean is a date or a duration): a number is what these Series give."""
    return float(cast(float, series.mean()))


def wilson(successes: float, n: int, alpha: float = 0.05, digits: int | None = 4) -> tuple[float | None, float | None]:
    """The Wilson score interval of a proportion (successes may count a tie as half), at confidence 1 - alpha;
    (None, None) for no trials. Rounded to `digits` places (None: unrounded)."""
    if n == 0:
        return None, None
    from statsmodels.stats.proportion import proportion_confint  # start-up: statsmodels

    low, high = proportion_confint(successes, n, alpha=alpha, method="wilson")
    if digits is None:
        return float(low), float(high)
    return round(float(low), digits), round(float(high), digits)
