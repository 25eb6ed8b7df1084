import os

import numpy as np
import pytest

from index.datasets import holidays, load_dataset, ukbench


def trapezoid_ap(ranking, positives):
    """Reference AP from its definition: at each positive, the mean of the precision
    just before and just after it, averaged over all positives."""
    total, found = 0.0, 0
    for rank, name in enumerate(ranking):
        if name in positives:
            before = found / rank if rank else 1.0
            found += 1
            total += (before + found / (rank + 1)) / 2
    return total / len(positives)


@pytest.fixture(scope="module")
def holidays_set(data_dir):
    return holidays(os.path.join(data_dir, "holidays"))


@pytest.fixture(scope="module")
def ukbench_set(data_dir):
    return ukbench(os.path.join(data_dir, "ukbench"))


def test_holidays_ground_truth_follows_the_group_rule(holidays_set):
    """Groups are id // 100, the query ends in 00, the positives are the rest of its
    group: 300 queries over groups of 2-10 images that partition the 811 images."""
    number = {n: int(os.path.splitext(n)[0]) for n in holidays_set.database}
    assert len(holidays_set.queries) == 300
    assert sum(n.endswith(".png") for n in holidays_set.database) == 6
    covered = []
    for query, positives in zip(holidays_set.queries, holidays_set._positives):
        assert number[query.name] % 100 == 0 and query.name not in positives
        assert {number[p] // 100 for p in positives} == {number[query.name] // 100}
        assert 2 <= len(positives) + 1 <= 10
        covered += [query.name, *positives]
    assert sorted(covered) == sorted(holidays_set.database)


def test_holidays_reversed_ranking_scores_the_reference_ap(holidays_set):
    """Query first, then the negatives, the positives last: the query is dropped
    before scoring and the AP is the trapezoid rule's."""
    rankings, expected = [], []
    for query, positives in zip(holidays_set.queries, holidays_set._positives):
        rest = [n for n in holidays_set.database if n not in positives and n != query.name]
        rankings.append([query.name] + rest + sorted(positives))
        expected.append(trapezoid_ap(rest + sorted(positives), positives))
    score = holidays_set.score(rankings)["mAP"]
    assert score == pytest.approx(np.mean(expected))
    assert score < 0.01
    with pytest.raises(ValueError):
        holidays_set.score(rankings[:-1])


def test_ukbench_ground_truth_is_four_views_including_the_query(ukbench_set):
    assert len(ukbench_set.queries) == 1000
    for i, (query, positives) in enumerate(zip(ukbench_set.queries, ukbench_set._positives)):
        assert query.name == f"ukbench{i:05d}.jpg" and not query.remove_self
        assert positives == {f"ukbench{j:05d}.jpg" for j in range(4 * (i // 4), 4 * (i // 4) + 4)}


def test_ukbench_ns_counts_the_group_in_the_top_four(ukbench_set):
    names = ukbench_set.database
    reversed_rankings = [[n for n in names if n not in g] + sorted(g) for g in ukbench_set._positives]
    assert ukbench_set.score(reversed_rankings)["N-S"] == 0.0
    # the query itself, one more view, then two images of another object
    half = [[q.name] + sorted(g - {q.name})[:1] + [n for n in names if n not in g][:2]
            for q, g in zip(ukbench_set.queries, ukbench_set._positives)]
    assert ukbench_set.score(half)["N-S"] == 2.0


def test_unknown_dataset_kind_or_folder_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("oxford", str(tmp_path))
    with pytest.raises(FileNotFoundError):
        load_dataset("holidays", str(tmp_path / "missing"))
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "ukbench00003.jpg").write_bytes(b"")
    assert [q.name for q in load_dataset("ukbench", str(tmp_path)).queries] == ["ukbench00003.jpg"]
