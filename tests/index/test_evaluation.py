import os

import numpy as np
import pytest

from index.datasets import holidays, ukbench
from index.evaluation import average_precision, mean_average_precision, ranks_without_junk, ukbench_ns_score


def test_average_precision_known_values():
    assert average_precision(np.array([0, 1]), 2) == pytest.approx(1.0)
    # revisitop compute_ap for a positive at rank 1 of 1: (0/1 + 1/2) / 2
    assert average_precision(np.array([1]), 1) == pytest.approx(0.25)
    assert average_precision(np.array([0]), 2) == pytest.approx(0.5)
    assert average_precision(np.array([], dtype=int), 3) == 0.0


def test_junk_is_taken_out_before_ranking():
    ranking = ["j1", "p1", "x", "j2", "p2"]
    assert ranks_without_junk(ranking, {"p1", "p2"}, {"j1", "j2"}).tolist() == [0, 2]
    assert mean_average_precision([ranking], [{"p1"}], [{"j1"}]) == pytest.approx(1.0)


def test_ukbench_ns():
    assert ukbench_ns_score([["a", "b", "x", "c", "d"]], [{"a", "b", "c", "d"}]) == 3.0


def test_holidays_protocol(data_dir):
    dataset = holidays(os.path.join(data_dir, "holidays"))
    assert len(dataset.database) == 811 and len(dataset.queries) == 300
    perfect = []
    for query, positives in zip(dataset.queries, dataset._positives):
        perfect.append([query.name] + sorted(positives) + [n for n in dataset.database if n not in positives][:10])
    assert dataset.score(perfect)["mAP"] == pytest.approx(1.0)
    assert all(q.remove_self for q in dataset.queries)


def test_ukbench_protocol(data_dir):
    dataset = ukbench(os.path.join(data_dir, "ukbench"))
    assert len(dataset.database) == 1000 and len(dataset.queries) == 1000
    perfect = [sorted(g) for g in dataset._positives]
    assert dataset.score(perfect)["N-S"] == 4.0
