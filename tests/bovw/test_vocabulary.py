import numpy as np
import pytest

from bovw.kmeans import nearest
from bovw.vocabulary import VocabularyConfig, VocabularyTree


@pytest.fixture(scope="module")
def points():
    rng = np.random.default_rng(1)
    centres = rng.random((40, 16)).astype(np.float32)
    return (centres[rng.integers(0, 40, 6000)] + 0.05 * rng.standard_normal((6000, 16))).astype(np.float32)


@pytest.fixture(scope="module")
def tree(points):
    return VocabularyTree.train(points, VocabularyConfig(branching=4, depth=3, seed=3), verbose=False)


def _greedy_descent(tree, x):
    node = 0
    for level in range(tree.depth):
        children = tree.centers[level][node * tree.branching:(node + 1) * tree.branching]
        node = node * tree.branching + int(np.argmin(((children - x) ** 2).sum(axis=1)))
    return node


def test_tree_assignment_equals_brute_force_descent(tree, points):
    words = tree.quantize(points[:400])
    assert words.shape == (400,) and tree.n_words == 64
    assert [_greedy_descent(tree, x) for x in points[:400]] == words.tolist()


def test_full_beam_equals_exact_nearest_word(tree, points):
    exact = nearest(points[:500], tree.centers[-1])[1][:, 0]
    assert np.array_equal(tree.quantize(points[:500], beam=tree.n_words), exact)
    assert np.mean(tree.quantize(points[:500], beam=4) == exact) >= np.mean(tree.quantize(points[:500]) == exact)


def test_flat_vocabulary_is_exact(points):
    flat = VocabularyTree.train(points, VocabularyConfig(branching=30, depth=1), verbose=False)
    assert np.array_equal(flat.quantize(points), nearest(points, flat.centers[0])[1][:, 0])


def test_multiple_assignment_returns_k_nearest_first(tree, points):
    words = tree.quantize(points[:100], k=3, beam=tree.n_words)
    exact = nearest(points[:100], tree.centers[-1], 3)[1]
    assert words.shape == (100, 3)
    assert np.array_equal(words, exact)


def test_training_is_deterministic_given_the_seed(points):
    config = VocabularyConfig(branching=4, depth=2, seed=7)
    a = VocabularyTree.train(points, config, verbose=False)
    b = VocabularyTree.train(points, config, verbose=False)
    assert all(np.array_equal(x, y) for x, y in zip(a.centers, b.centers))


def test_nodes_with_few_points_still_give_a_complete_tree():
    x = np.random.default_rng(0).random((7, 8)).astype(np.float32)
    tree = VocabularyTree.train(x, VocabularyConfig(branching=3, depth=3), verbose=False)
    assert [c.shape[0] for c in tree.centers] == [3, 9, 27]
    assert np.all(tree.quantize(x) < 27)


def test_state_dict_round_trip(tree, points):
    meta, arrays = tree.state_dict()
    copy = VocabularyTree.from_state_dict(meta, arrays)
    assert np.array_equal(copy.quantize(points[:200]), tree.quantize(points[:200]))
    with pytest.raises(ValueError, match="version"):
        VocabularyTree.from_state_dict({**meta, "version": 99}, arrays)


def test_wrong_descriptor_dimension_is_refused(tree):
    with pytest.raises(ValueError, match="do not fit"):
        tree.quantize(np.zeros((3, 5), np.float32))
