"""Statistics of a study (pure functions of per-seed values).

* Per run: mean and sample standard deviation (n − 1) over seeds.
* Per run against its baseline: the **paired** difference (run − baseline at the same seed, over the seeds both
  finished), its mean, standard deviation and a 95 % confidence interval from the paired t distribution:
  ``mean ± t(0.975, n − 1) · std / √n``, the quantile from ``scipy.stats.t``. Paired, because all runs of one seed
  share the data subset, order and augmentation: the seed-to-seed spread that moves every method together cancels.
  With one pair there is no interval. The interval assumes the differences are roughly normal; with 3–5 seeds it is
  wide, which is the honest reading.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

#: How the reports name the interval.
INTERVAL = "95 % paired t interval (scipy.stats.t quantile, n − 1 degrees of freedom)"
LEVEL = 0.95


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n − 1); ``std`` is None for fewer than 2 values, both for none."""
    values = list(values)
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def t_quantile(level: float, dof: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, dof))


def paired_interval(differences: Sequence[float], level: float = LEVEL) -> tuple[float | None, float | None]:
    """The ``level`` confidence interval of the mean of paired differences (paired t); ``(None, None)`` below 2."""
    n = len(differences)
    mean, std = mean_std(differences)
    if n < 2:
        return None, None
    half = t_quantile(level, n - 1) * std / math.sqrt(n)
    return mean - half, mean + half


def summarise(per_seed: Mapping[int, float]) -> dict:
    """``{"per_seed", "mean", "std", "n"}`` of per-seed values (seed keys become strings, as in JSON)."""
    mean, std = mean_std(list(per_seed.values()))
    return {"per_seed": {str(s): v for s, v in sorted(per_seed.items())}, "mean": mean, "std": std, "n": len(per_seed)}


def compare(per_seed: Mapping[int, float], baseline: Mapping[int, float], level: float = LEVEL) -> dict:
    """The paired difference ``per_seed − baseline`` over the seeds both have: per seed, mean, std, the interval, and
    whether the interval holds 0 (``crosses_zero``: the data do not tell the two apart at this level)."""
    differences = {s: per_seed[s] - baseline[s] for s in sorted(per_seed) if s in baseline}
    row = summarise(differences)
    low, high = paired_interval(list(differences.values()), level)
    row.update(ci_low=low, ci_high=high, crosses_zero=None if low is None else bool(low <= 0 <= high))
    return row
