"""Two synthetic tables for examples, tests and the quality benchmark (no download needed).

- :func:`mixed_classification`: three classes from numeric and categorical columns, with missing
  values in both kinds and a category too rare to matter: what real tabular data looks like.
- :func:`weak_regression`: a regression whose target is mostly noise (R^2 of the true function
  about 0.3), where overfitting is the main risk.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def mixed_classification(n: int = 1500, seed: int = 0) -> pd.DataFrame:
    """A table with columns ``age``, ``income``, ``visits``, ``score``, ``city``, ``plan``, ``device``
    and the target ``label`` (three classes, "low", "mid", "high")."""
    rng = np.random.default_rng(seed)
    age = rng.normal(40, 12, n).clip(18, 90)
    income = np.exp(rng.normal(10.5, 0.6, n))
    visits = rng.poisson(3, n).astype(float)
    score = rng.normal(0, 1, n)
    city = rng.choice(["paris", "lyon", "lille", "nantes", "nice"], n, p=[0.35, 0.25, 0.2, 0.15, 0.05])
    plan = rng.choice(["free", "basic", "pro"], n, p=[0.5, 0.3, 0.2])
    device = rng.choice(["ios", "android", "web", "tv"], n, p=[0.4, 0.4, 0.19, 0.01])
    effect = {"free": -1.0, "basic": 0.0, "pro": 1.2}
    city_effect = {"paris": 0.5, "lyon": 0.0, "lille": -0.3, "nantes": 0.2, "nice": -0.6}
    z = (0.04 * (age - 40) + 0.8 * (np.log(income) - 10.5) + 0.3 * (visits - 3) + 0.9 * np.sin(2 * score)
         + np.vectorize(effect.get)(plan) + np.vectorize(city_effect.get)(city) + rng.normal(0, 0.7, n))
    label = np.where(z < -0.6, "low", np.where(z < 0.7, "mid", "high"))
    frame = pd.DataFrame({"age": age.round(0), "income": income.round(2), "visits": visits, "score": score,
                          "city": city, "plan": plan, "device": device, "label": label})
    for column, share in (("age", 0.1), ("income", 0.15), ("city", 0.08), ("device", 0.05)):
        frame.loc[rng.random(n) < share, column] = np.nan
    return frame


def weak_regression(n: int = 1200, seed: int = 0) -> pd.DataFrame:
    """Ten numeric columns ``x0``..``x9`` (three of them informative, one nonlinearly) and the
    target ``y``, most of whose variance is noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (n, 10))
    signal = 0.6 * x[:, 0] - 0.4 * x[:, 1] + 0.5 * np.tanh(2 * x[:, 2])
    y = signal + rng.normal(0, 1.2 * signal.std(), n)
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(10)])
    frame["y"] = 100 + 15 * y
    return frame
