import numpy as np
import pytest

from cnn.pooling import l2_normalize
from index.dense_index import DenseIndex

DIM = 8


@pytest.fixture
def images(rng):
    """Ten unit vectors, each with 0-4 unit region vectors (some have none)."""
    vectors = l2_normalize(rng.standard_normal((10, DIM)))
    regions = [l2_normalize(rng.standard_normal((int(r), DIM))) for r in [3, 0, 1, 4, 2, 0, 3, 1, 2, 4]]
    return vectors, regions


def build(vectors, regions, batches=(10,)):
    index, start = DenseIndex(DIM), 0
    for size in batches:
        index.add(vectors[start:start + size], regions[start:start + size])
        start += size
    return index


def assert_same(a: DenseIndex, b: DenseIndex):
    assert np.array_equal(a.vectors, b.vectors)
    assert np.array_equal(a.region_offsets, b.region_offsets)
    assert np.array_equal(a.regions, b.regions)


def test_add_in_batches_then_remove_equals_a_fresh_build(images):
    vectors, regions = images
    index = build(vectors, regions, batches=(4, 1, 5))
    assert_same(index, build(vectors, regions))
    assert index.region_offsets.tolist() == [0, 3, 3, 4, 8, 10, 10, 13, 14, 16, 20]
    removed = [0, 3, 5, 9]
    index.remove(removed)
    kept = [i for i in range(10) if i not in removed]
    assert_same(index, build(vectors[kept], [regions[i] for i in kept], batches=(len(kept),)))
    assert np.allclose(index.scores(vectors[2]), vectors[kept] @ vectors[2])


def test_region_scores_are_the_best_region_match(images, rng):
    vectors, regions = images
    index = build(vectors, regions)
    slots = np.array([7, 1, 3, 0])
    for query in (rng.standard_normal(DIM), rng.standard_normal((3, DIM))):
        queries = np.atleast_2d(query)
        expected = [max((r @ q for r in regions[s] for q in queries), default=-np.inf) for s in slots]
        assert np.allclose(index.region_scores(query, slots), expected, atol=1e-5)
    assert index.region_scores(vectors[0], np.array([1]))[0] == -np.inf  # no regions


def test_state_dict_round_trip(images):
    vectors, regions = images
    index = build(vectors, regions)
    meta, arrays = index.state_dict()
    assert meta["n_images"] == 10 and meta["dim"] == DIM
    copy = DenseIndex.from_state_dict(meta, arrays)
    assert_same(copy, index)
    assert np.array_equal(copy.region_scores(vectors[3], np.arange(10)),
                          index.region_scores(vectors[3], np.arange(10)))


@pytest.mark.parametrize("change", ["kind", "version", "n_images", "vectors", "offsets_length",
                                    "offsets_start", "offsets_end", "offsets_decrease", "region_dim"])
def test_inconsistent_state_is_refused(images, change):
    meta, arrays = build(*images).state_dict()
    meta, arrays = dict(meta), dict(arrays)
    offsets = arrays["region_offsets"].copy()
    if change == "kind":
        meta["kind"] = "inverted-file"
    elif change == "version":
        meta["version"] = 99
    elif change == "n_images":
        meta["n_images"] = 11
    elif change == "vectors":
        arrays["vectors"] = arrays["vectors"][:, :DIM - 1]
    elif change == "offsets_length":
        arrays["region_offsets"] = offsets[:-1]
    elif change == "offsets_start":
        arrays["region_offsets"] = offsets + 1
    elif change == "offsets_end":
        arrays["regions"] = arrays["regions"][:-1]
    elif change == "offsets_decrease":
        offsets[2], offsets[3] = offsets[3], offsets[2] - 1  # [.., 3, 3, 4, ..] -> [.., 4, 2, ..]
        arrays["region_offsets"] = offsets
    elif change == "region_dim":
        arrays["regions"] = arrays["regions"][:, :DIM - 1]
    with pytest.raises(ValueError):
        DenseIndex.from_state_dict(meta, arrays)


def test_one_region_array_per_vector_is_needed(images):
    vectors, regions = images
    with pytest.raises(ValueError, match="one region array per vector"):
        DenseIndex(DIM).add(vectors[:3], regions[:2])
