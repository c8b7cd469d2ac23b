"""Statistics shared by the stages and the apps above them (calibration, label resolution, evaluation)."""


def wilson(successes: float, n: int, alpha: float = 0.05, digits: int | None = 4) -> tuple[float | None, float | None]:
    """The Wilson score interval of a proportion (successes may count a tie as half), at confidence 1 - alpha;
    (None, None) for no trials. Rounded to `digits` places (None: unrounded)."""
    if n == 0:
        return None, None
    from statsmodels.stats.proportion import proportion_confint

    low, high = proportion_confint(successes, n, alpha=alpha, method="wilson")
    if digits is None:
        return float(low), float(high)
    return round(float(low), digits), round(float(high), digits)
