import numpy as np
import pytest

from cnn import pooling
from cnn.global_descriptors import GlobalDescriptorConfig, embed, raw_vectors
from cnn.whitening import PCAWhitening


def unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@pytest.fixture
def feature_map(rng):
    """(C=6, H=4, W=5) non-negative map, a third of it zero (as after ReLU)."""
    x = rng.random((6, 4, 5)).astype(np.float32) * 6
    x[rng.random(x.shape) < 0.3] = 0
    return x


def test_pooled_vectors_follow_their_formulas(feature_map):
    x = feature_map.astype(np.float64)
    expected = {"mac": x.max(axis=(1, 2)), "spoc": x.sum(axis=(1, 2)),
                "gem": np.mean(np.maximum(x, 1e-6) ** 3, axis=(1, 2)) ** (1 / 3),
                "crow": pooling.crow(feature_map)}
    for method, vector in expected.items():
        raw = raw_vectors([feature_map], GlobalDescriptorConfig(method=method))
        assert raw.shape == (1, 6) and np.allclose(raw[0], unit(vector), atol=1e-6), method
    assert not np.allclose(unit(expected["mac"]), unit(expected["spoc"]), atol=1e-3)  # the methods differ here


def test_gem_p1_has_the_direction_of_spoc(feature_map):
    gem1 = raw_vectors([feature_map], GlobalDescriptorConfig(method="gem", gem_p=1.0))
    spoc = raw_vectors([feature_map], GlobalDescriptorConfig(method="spoc"))
    gem3 = raw_vectors([feature_map], GlobalDescriptorConfig(method="gem", gem_p=3.0))
    assert np.allclose(gem1, spoc, atol=1e-5) and not np.allclose(gem3, spoc, atol=1e-3)


@pytest.mark.parametrize("levels, count", [(1, 2), (2, 6), (3, 15)])
def test_rmac_rows_are_unit_region_maxima(rng, levels, count):
    """On a square 6x6 map level l has l*l regions, plus the whole map: 1 + 1 + 4 + 9 at three levels."""
    x = rng.random((5, 6, 6)).astype(np.float32)
    raw = raw_vectors([x], GlobalDescriptorConfig(method="rmac", rmac_levels=levels))
    regions = pooling.rmac_regions(6, 6, levels)
    assert raw.shape == (count, 5) and len(regions) == count
    expected = [unit(x[:, y0:y1, x0:x1].max(axis=(1, 2))) for y0, x0, y1, x1 in regions]
    assert np.allclose(raw, expected, atol=1e-6)
    assert np.allclose(raw[0], unit(x.max(axis=(1, 2))), atol=1e-6)  # the first region is the whole map


def test_embed_sums_whitened_rmac_regions(rng):
    x = rng.random((5, 6, 6)).astype(np.float32)
    config = GlobalDescriptorConfig(method="rmac")
    raw = raw_vectors([x], config)
    whitening = PCAWhitening.learn(unit(rng.random((50, 5))), dim=4)
    descriptor, rows = embed(raw, whitening, config)
    assert np.allclose(rows, whitening.apply(raw)) and rows.shape == (15, 4)
    assert np.allclose(descriptor, unit(whitening.apply(raw).sum(axis=0)), atol=1e-6)
    plain, plain_rows = embed(raw, None, config)
    assert np.allclose(plain, unit(raw.sum(axis=0)), atol=1e-6) and np.allclose(plain_rows, raw, atol=1e-6)


def test_embed_of_a_single_vector_is_its_whitened_row(rng, feature_map):
    config = GlobalDescriptorConfig(method="gem")
    raw = raw_vectors([feature_map], config)
    whitening = PCAWhitening.learn(unit(rng.random((50, 6))))
    descriptor, rows = embed(raw, whitening, config)
    assert np.allclose(descriptor, whitening.apply(raw)[0]) and rows.shape == (1, 6)
    assert np.isclose(np.linalg.norm(descriptor), 1.0)


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="unknown pooling"):
        GlobalDescriptorConfig(method="vlad")


def test_several_scales_make_one_descriptor(rng):
    """R-MAC keeps the regions of every scale in turn; pooled methods sum the scales' unit vectors."""
    big, small = rng.random((8, 12, 16)).astype(np.float32), rng.random((8, 6, 8)).astype(np.float32)
    rmac = GlobalDescriptorConfig(method="rmac")
    both = raw_vectors([big, small], rmac)
    assert np.array_equal(both, np.concatenate([raw_vectors([big], rmac), raw_vectors([small], rmac)]))
    gem = GlobalDescriptorConfig(method="gem")
    expected = raw_vectors([big], gem) + raw_vectors([small], gem)
    assert np.allclose(raw_vectors([big, small], gem), expected / np.linalg.norm(expected))
