import numpy as np
import pytest

from bovw.hamming import HammingConfig
from index.inverted_file import InvertedFile
from index.match_kernel import SIGNATURE, hamming_scores

N_WORDS = 12


def signature(bits):
    """uint64 with the given bit positions set."""
    return np.uint64(sum(1 << int(b) for b in bits))


def inverted_file(words, signatures, n_words=N_WORDS):
    inverted = InvertedFile(n_words, {SIGNATURE: np.uint64})
    inverted.add([np.asarray(w) for w in words], {SIGNATURE: [np.asarray(s, np.uint64) for s in signatures]})
    return inverted


def noisy(rng, base, p):
    """``base`` signatures with each bit flipped with probability ``p``."""
    bits = rng.random((len(base), 64)) < p
    return np.bitwise_xor(base, np.packbits(bits, axis=1, bitorder="little").view(np.uint64).ravel())


def reference_scores(images, image_signatures, words, signatures, config):
    """The HE kernel from its definition, one vote at a time (no shared code with the index)."""
    n = len(images)
    df = np.array([sum(w in set(image.tolist()) for image in images) for w in range(N_WORDS)])
    idf = np.where(df > 0, np.log(n / np.maximum(df, 1)), 0.0)
    image_norms = np.array([np.linalg.norm(np.bincount(image, minlength=N_WORDS) * idf) for image in images])
    query_norm = np.linalg.norm(np.bincount(words[:, 0], minlength=N_WORDS) * idf)
    scores = np.zeros(n)
    for f in range(len(words)):
        votes = []
        for a in range(words.shape[1]):
            w = words[f, a]
            for i in range(n):
                for j in np.flatnonzero(images[i] == w):
                    h = bin(int(image_signatures[i][j]) ^ int(signatures[f, a])).count("1")
                    if h <= config.threshold:
                        votes.append((i, np.exp(-h * h / config.sigma ** 2) * idf[w] ** 2))
        per_image = np.bincount([i for i, _ in votes], minlength=n)
        spread = np.log(n / np.count_nonzero(per_image)) if config.inter_image and votes else 1.0
        for i, weight in votes:
            scores[i] += weight * spread / (np.sqrt(per_image[i]) if config.burstiness else 1.0)
    return np.divide(scores, image_norms * query_norm, out=np.zeros(n), where=image_norms > 0)


@pytest.fixture
def collection(rng):
    """Six images of 10-20 features over 5 of the 12 words each (so idf varies);
    signatures of one word lie about 19 bits apart, so most pairs vote at
    threshold 24, a quarter at 16."""
    base = rng.integers(0, 2 ** 63, N_WORDS, dtype=np.uint64)
    images = [rng.choice(rng.choice(N_WORDS, 5, replace=False), rng.integers(10, 21)) for _ in range(6)]
    return base, images, [noisy(rng, base[w], 0.18) for w in images]


@pytest.mark.parametrize("config", [HammingConfig(), HammingConfig(burstiness=False),
                                    HammingConfig(inter_image=True), HammingConfig(threshold=16, sigma=8.0)])
@pytest.mark.parametrize("k", [1, 2])
def test_scores_equal_the_reference(collection, rng, config, k):
    base, images, image_signatures = collection
    words = np.concatenate([images[2][:8], rng.integers(0, N_WORDS, 6)])
    if k == 2:
        words = np.stack([words, (words + 1 + rng.integers(0, N_WORDS - 1, len(words))) % N_WORDS], axis=1)
    words = words.reshape(len(words), k)
    signatures = noisy(rng, base[words].ravel(), 0.18).reshape(words.shape)
    inverted = inverted_file(images, image_signatures)
    got = hamming_scores(inverted, words, signatures, config)
    expected = reference_scores(images, image_signatures, words, signatures, config)
    assert np.count_nonzero(expected) >= 3 and got.dtype == np.float32
    assert len(np.unique(inverted.idf[words])) >= 3
    assert np.allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_an_image_scores_itself_highest(collection):
    _, images, image_signatures = collection
    inverted = inverted_file(images, image_signatures)
    for i, (words, signatures) in enumerate(zip(images, image_signatures)):
        scores = hamming_scores(inverted, words, signatures)
        assert int(np.argmax(scores)) == i and scores[i] > 1.2 * np.delete(scores, i).max()


def test_a_vote_beyond_the_threshold_adds_nothing():
    """One feature per image: score = exp(-h^2 / sigma^2) up to h = threshold, then 0."""
    inverted = inverted_file([[0], [1]], [[0], [0]])
    for h, config, expected in [(24, HammingConfig(), np.exp(-24 ** 2 / 16 ** 2)), (25, HammingConfig(), 0.0),
                                (25, HammingConfig(threshold=25), np.exp(-25 ** 2 / 16 ** 2))]:
        scores = hamming_scores(inverted, np.array([0]), np.array([signature(range(h))]), config)
        assert scores[0] == pytest.approx(expected, rel=1e-6) and scores[1] == 0


def test_burstiness_divides_by_the_root_of_the_votes():
    """Four identical features of word 0 in image 0 all match the query feature:
    they count 4 (cosine 1) without burstiness, 4 / sqrt(4) with it."""
    inverted = inverted_file([[0, 0, 0, 0], [1]], [[0] * 4, [0]])
    query = np.array([0]), np.array([signature([])])
    assert hamming_scores(inverted, *query, HammingConfig(burstiness=False))[0] == pytest.approx(1.0)
    assert hamming_scores(inverted, *query, HammingConfig(burstiness=True))[0] == pytest.approx(0.5)


def test_an_images_signatures_are_found_in_the_postings(rng):
    """Signatures live only in the postings; an image's are read back in its feature order."""
    from index.match_kernel import feature_signatures
    images = [rng.integers(0, 30, n) for n in (25, 40, 0, 33)]
    signatures = [rng.integers(0, 2 ** 63, len(w), dtype=np.int64).astype(np.uint64) for w in images]
    inverted = InvertedFile(30, {SIGNATURE: np.uint64})
    inverted.add(images[:2], {SIGNATURE: signatures[:2]})
    inverted.add(images[2:], {SIGNATURE: signatures[2:]})
    inverted.remove([0])
    for slot, original in enumerate([1, 2, 3]):
        assert np.array_equal(feature_signatures(inverted, slot, images[original]), signatures[original])
