import numpy as np

from cnn import pooling
from cnn.whitening import PCAWhitening


def test_gem_interpolates_between_average_and_max(rng):
    x = rng.random((16, 5, 7)).astype(np.float32)
    average = x.reshape(16, -1).mean(axis=1)
    assert np.allclose(pooling.gem(x, p=1.0), average, atol=1e-5)
    assert np.allclose(pooling.spoc(x), average * 35, atol=1e-4)
    assert np.allclose(pooling.gem(x, p=200.0), pooling.mac(x), rtol=0.03)


def test_rmac_regions_cover_the_map_at_three_scales():
    regions = pooling.rmac_regions(8, 10)
    assert tuple(regions[0]) == (0, 0, 8, 10)
    sides = regions[1:, 2] - regions[1:, 0]
    assert set(sides.tolist()) == {8, 5, 4}
    assert regions[:, 2].max() <= 8 and regions[:, 3].max() <= 10 and regions.min() >= 0
    assert np.all(regions[1:, 2] - regions[1:, 0] == regions[1:, 3] - regions[1:, 1])  # squares


def test_region_mac_of_the_whole_map_is_mac(rng):
    x = rng.random((4, 6, 6)).astype(np.float32)
    assert np.allclose(pooling.region_mac(x, np.array([[0, 0, 6, 6]]))[0], pooling.mac(x))


def test_crow_weights_the_active_region(rng):
    x = np.zeros((3, 4, 4), np.float32)
    x[:, 1, 1] = [1.0, 2.0, 0.0]
    x[0, 3, 3] = 0.1
    vector = pooling.crow(x)
    assert vector[2] == 0 and vector[1] > 0 and vector.shape == (3,)


def test_whitening_round_trip_decorrelates(rng):
    x = rng.standard_normal((500, 8)) @ rng.standard_normal((8, 8))
    x = pooling.l2_normalize(x)
    whitening = PCAWhitening.learn(x)
    projected = (x - whitening.mean) @ whitening.projection
    assert np.allclose(np.cov(projected, rowvar=False), np.eye(8), atol=1e-2)
    meta, arrays = whitening.state_dict()
    copy = PCAWhitening.from_state_dict(meta, arrays)
    assert np.array_equal(copy.apply(x[:5]), whitening.apply(x[:5]))
    assert np.allclose(np.linalg.norm(whitening.apply(x[:5]), axis=1), 1.0, atol=1e-5)
