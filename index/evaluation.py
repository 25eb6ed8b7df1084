"""Retrieval metrics of the standard benchmarks, as pure functions.

``average_precision`` is revisitop's ``compute_ap`` (the same trapezoidal rule as
the official Holidays ``eval_holidays.py``): precision is averaged at each
positive between its value just before and just after that positive.
"""
from __future__ import annotations

import numpy as np


def average_precision(positive_ranks: np.ndarray, n_positives: int) -> float:
    """AP from the 0-based ranks of the positives found (junk already removed).

    Args:
        positive_ranks: (m,) sorted ranks at which positives appear.
        n_positives: total positives of the query (missing ones count as 0).
    """
    ranks = np.asarray(positive_ranks, dtype=np.float64)
    if n_positives == 0:
        return float("nan")
    j = np.arange(len(ranks), dtype=np.float64)
    precision_before = np.where(ranks == 0, 1.0, j / np.maximum(ranks, 1))
    precision_after = (j + 1) / (ranks + 1)
    return float(((precision_before + precision_after) / 2.0).sum() / n_positives)


def ranks_without_junk(ranking: list[str], positives: set, junk: set) -> np.ndarray:
    """0-based ranks of the positives in ``ranking`` once junk items are taken out."""
    ranks, n_junk = [], 0
    for position, name in enumerate(ranking):
        if name in junk:
            n_junk += 1
        elif name in positives:
            ranks.append(position - n_junk)
    return np.asarray(ranks, dtype=np.int64)


def mean_average_precision(rankings: list[list[str]], positives: list[set],
                           junk: list[set] | None = None) -> float:
    """mAP over queries that have at least one positive.

    Args:
        rankings: per query, database names best first.
        positives: per query, names of its positives.
        junk: per query, names ignored wherever they rank (default none).
    """
    junk = junk or [set()] * len(rankings)
    aps = [average_precision(ranks_without_junk(r, p, j), len(p))
           for r, p, j in zip(rankings, positives, junk) if len(p)]
    return float(np.mean(aps)) if aps else float("nan")


def ukbench_ns_score(rankings: list[list[str]], groups: list[set]) -> float:
    """UKBench N-S score: mean count of same-object images among each query's top 4
    (the query itself included, so 4.0 is perfect)."""
    return float(np.mean([len(set(r[:4]) & g) for r, g in zip(rankings, groups)]))
