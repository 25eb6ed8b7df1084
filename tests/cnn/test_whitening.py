import numpy as np
import pytest

from cnn.whitening import PCAWhitening


@pytest.fixture
def correlated(rng):
    """1000 8-d vectors with axis variances 8^2 .. 1^2, rotated: strongly correlated."""
    rotation = np.linalg.qr(rng.standard_normal((8, 8)))[0]
    return (rng.standard_normal((1000, 8)) * np.arange(8, 0, -1)) @ rotation + 3.0


def test_kept_dimensions_are_the_top_components_whitened(correlated):
    whitening = PCAWhitening.learn(correlated, dim=3)
    assert (whitening.input_dim, whitening.output_dim) == (8, 3)
    projected = (correlated - whitening.mean) @ whitening.projection
    assert np.allclose(np.cov(projected, rowvar=False), np.eye(3), atol=1e-4)
    top = np.sort(np.linalg.eigvalsh(np.cov(correlated, rowvar=False)))[::-1][:3]
    directions = whitening.projection / np.linalg.norm(whitening.projection, axis=0)
    assert np.allclose(np.var(correlated @ directions, axis=0, ddof=1), top, rtol=1e-4)
    full = PCAWhitening.learn(correlated)
    assert np.allclose(np.abs(whitening.projection), np.abs(full.projection[:, :3]), atol=1e-5)
    out = whitening.apply(correlated[:20])
    assert out.shape == (20, 3) and np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_components_are_capped_by_the_training_set_and_small_ones_clamped(rng):
    few = PCAWhitening.learn(rng.standard_normal((5, 8)))
    assert few.output_dim == 4  # 5 points span 4 dimensions
    flat = np.c_[rng.standard_normal((200, 3)), np.zeros((200, 3))]  # 3 of 6 dimensions carry nothing
    whitening = PCAWhitening.learn(flat)
    assert whitening.output_dim == 6 and np.all(np.isfinite(whitening.projection))
    assert np.all(np.isfinite(whitening.apply(flat[:10])))


def test_state_round_trip_and_refusals(correlated):
    whitening = PCAWhitening.learn(correlated, dim=5)
    meta, arrays = whitening.state_dict()
    copy = PCAWhitening.from_state_dict(meta, arrays)
    assert np.array_equal(copy.mean, whitening.mean) and np.array_equal(copy.projection, whitening.projection)
    with pytest.raises(ValueError):
        PCAWhitening.from_state_dict({**meta, "kind": "dense-index"}, arrays)
    with pytest.raises(ValueError):
        PCAWhitening(whitening.mean[:7], whitening.projection)
    with pytest.raises(ValueError):
        PCAWhitening.learn(correlated[:1])
