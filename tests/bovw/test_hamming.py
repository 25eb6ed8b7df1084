import numpy as np
import pytest

from bovw.hamming import BITS, HammingEmbedding, hamming_distance
from cnn.pooling import l2_normalize


@pytest.fixture(scope="module")
def embedding():
    rng = np.random.default_rng(0)
    x = l2_normalize(rng.random((5000, 128)).astype(np.float32) ** 2)
    words = rng.integers(0, 10, len(x))
    return HammingEmbedding.learn(x, words, n_words=10, seed=1), x, words


def test_close_descriptors_have_close_signatures(embedding):
    he, x, words = embedding
    rng = np.random.default_rng(3)
    noisy = l2_normalize(x[:500] + 0.01 * rng.standard_normal(x[:500].shape).astype(np.float32))
    near = hamming_distance(he.signatures(x[:500], words[:500]), he.signatures(noisy, words[:500]))
    far = hamming_distance(he.signatures(x[:500], words[:500]), he.signatures(x[500:1000], words[:500]))
    assert np.median(near) <= 8
    assert abs(np.median(far) - BITS / 2) <= 6


def test_medians_split_each_bit_in_half(embedding):
    he, x, words = embedding
    signatures = he.signatures(x, words)
    bits = np.unpackbits(signatures.view(np.uint8).reshape(-1, 8), axis=1, bitorder="little")
    assert np.allclose(bits.mean(axis=0), 0.5, atol=0.05)


def test_state_dict_round_trip_is_exact(embedding):
    he, x, words = embedding
    meta, arrays = he.state_dict()
    copy = HammingEmbedding.from_state_dict(meta, arrays)
    assert np.array_equal(copy.projection, he.projection) and np.array_equal(copy.medians, he.medians)
    assert np.array_equal(copy.signatures(x[:50], words[:50]), he.signatures(x[:50], words[:50]))
