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


def test_revisitop_protocols_with_junk(tmp_path):
    import pickle

    from index.datasets import load_dataset
    names = [f"img{i}" for i in range(6)]
    gnd = {"imlist": names, "qimlist": ["q0"],
           "gnd": [{"easy": [0], "hard": [1], "junk": [2], "bbx": [1.0, 2.0, 30.0, 40.0]}]}
    with open(tmp_path / "gnd_roxford5k.pkl", "wb") as handle:
        pickle.dump(gnd, handle)
    dataset = load_dataset("revisitop", str(tmp_path))
    assert dataset.name == "roxford5k" and dataset.database[0] == "jpg/img0.jpg"
    assert dataset.queries[0].bbox == (1.0, 2.0, 30.0, 40.0) and dataset.queries[0].name == "jpg/q0.jpg"
    ranking = ["jpg/img2.jpg", "jpg/img1.jpg", "jpg/img3.jpg", "jpg/img0.jpg"]
    scores = dataset.score([ranking])
    # Easy: img0 positive, img1 and img2 junk -> img0 at rank 1 after removing junk: (0/1 + 1/2)/2
    assert scores["E"] == pytest.approx(0.25)
    # Medium: img0, img1 positive, img2 junk -> ranks 0 and 2
    assert scores["M"] == pytest.approx(((1 + 1) / 2 + (1 / 2 + 2 / 3) / 2) / 2)
    # Hard: img1 positive, img0 and img2 junk -> rank 0
    assert scores["H"] == pytest.approx(1.0)
