import numpy as np
import pytest

from bovw.kmeans import kmeans, nearest


def clusters(rng, sizes, dim=16):
    """Centres about 14 apart (std 10 per axis), points 0.1 around them."""
    centres = (10 * rng.standard_normal((len(sizes), dim))).astype(np.float32)
    points = np.repeat(centres, sizes, axis=0) + 0.1 * rng.standard_normal((sum(sizes), dim))
    return centres, points.astype(np.float32)


@pytest.mark.parametrize("seed", range(5))
def test_two_separated_clusters_are_recovered(rng, seed):
    """Two clusters of unequal size: every start converges to the two cluster means.
    (The initialisation is random, not k-means++, so with many clusters a bad
    start is a legitimate local minimum; see the fixed-point test below.)"""
    centres, x = clusters(rng, [300, 100])
    found = kmeans(x, 2, seed=seed)
    order = np.argsort(((found[:, None] - centres[None]) ** 2).sum(axis=2)[:, 0])  # found[order[0]] ~ centre 0
    assert np.allclose(found[order], [x[:300].mean(axis=0), x[300:].mean(axis=0)], atol=1e-4)


def test_converged_centroids_are_the_means_of_their_cells(rng):
    """Lloyd's fixed point: each centroid is the mean of the points nearest to it."""
    _, x = clusters(rng, [100] * 8)
    found = kmeans(x, 8, seed=1, niter=50)
    cell = nearest(x, found)[1][:, 0]
    assert len(np.unique(cell)) == 8
    means = np.stack([x[cell == j].mean(axis=0) for j in range(8)])
    assert np.allclose(means, found, atol=1e-4)


def test_nearest_equals_brute_force(rng):
    x = rng.standard_normal((300, 8)).astype(np.float32)
    centroids = rng.standard_normal((20, 8)).astype(np.float32)
    distances, indices = nearest(x, centroids, k=3)
    brute = ((x[:, None, :] - centroids[None]) ** 2).sum(axis=2)
    order = np.argsort(brute, axis=1, kind="stable")[:, :3]
    assert indices.shape == (300, 3) and indices.dtype == np.int64
    assert np.array_equal(indices, order)
    assert np.allclose(distances, np.take_along_axis(brute, order, axis=1), rtol=1e-4, atol=1e-4)


def test_same_seed_same_centroids_other_seed_other_centroids(rng):
    x = rng.random((500, 4)).astype(np.float32)  # no cluster structure: the start matters
    assert np.array_equal(kmeans(x, 8, seed=3), kmeans(x, 8, seed=3))
    assert not np.allclose(kmeans(x, 8, seed=3), kmeans(x, 8, seed=4))


def test_fewer_points_than_centroids(rng):
    """Every point is a centroid; the padding repeats the first point, so ties go to it."""
    x = rng.random((3, 4)).astype(np.float32)
    found = kmeans(x, 5)
    assert found.shape == (5, 4) and found.dtype == np.float32
    assert np.array_equal(found[:3], x) and np.array_equal(found[3:], x[[0, 0]])
    assert nearest(x, found)[1][:, 0].tolist() == [0, 1, 2]
    with pytest.raises(ValueError):
        kmeans(np.zeros((0, 4), np.float32), 2)
