import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from index.inverted_file import InvertedFile

N_WORDS = 50


def dense_tfidf_scores(images: list[np.ndarray], query: np.ndarray) -> np.ndarray:
    """Brute force: dense tf-idf vectors, L2-normalised, dot product."""
    tf = np.array([np.bincount(w, minlength=N_WORDS) for w in images], dtype=np.float64)
    df = (tf > 0).sum(axis=0)
    idf = np.where(df > 0, np.log(len(images) / np.maximum(df, 1)), 0.0)
    docs = tf * idf
    docs /= np.maximum(np.linalg.norm(docs, axis=1, keepdims=True), 1e-300)
    q = np.bincount(query, minlength=N_WORDS) * idf
    q /= max(np.linalg.norm(q), 1e-300)
    return docs @ q


def random_images(rng, n):
    return [rng.integers(0, N_WORDS, rng.integers(1, 40)) for _ in range(n)]


def test_scores_equal_dense_cosine(rng):
    images = random_images(rng, 30)
    inverted = InvertedFile(N_WORDS)
    inverted.add(images)
    for _ in range(5):
        query = rng.integers(0, N_WORDS, 25)
        assert np.allclose(inverted.scores(query), dense_tfidf_scores(images, query), atol=1e-6)


def test_identical_image_scores_one(rng):
    images = random_images(rng, 10)
    inverted = InvertedFile(N_WORDS)
    inverted.add(images)
    assert np.isclose(inverted.scores(images[3])[3], 1.0, atol=1e-6)


def test_add_in_batches_equals_one_build(rng):
    images = random_images(rng, 40)
    once, batched = InvertedFile(N_WORDS), InvertedFile(N_WORDS)
    once.add(images)
    for start in range(0, 40, 7):
        batched.add(images[start:start + 7])
    assert np.array_equal(once.offsets, batched.offsets)
    assert np.array_equal(once.image_slots, batched.image_slots)
    assert np.allclose(once.idf, batched.idf)


def test_remove_keeps_idf_right(rng):
    images = random_images(rng, 20)
    inverted = InvertedFile(N_WORDS)
    inverted.add(images)
    mapping = inverted.remove([0, 5, 19])
    kept = [w for i, w in enumerate(images) if i not in (0, 5, 19)]
    fresh = InvertedFile(N_WORDS)
    fresh.add(kept)
    assert mapping[5] == -1 and mapping[6] == 4
    assert np.allclose(inverted.idf, fresh.idf)
    query = rng.integers(0, N_WORDS, 30)
    assert np.allclose(inverted.scores(query), dense_tfidf_scores(kept, query), atol=1e-6)


def test_payload_stays_aligned_with_postings(rng):
    images = random_images(rng, 12)
    inverted = InvertedFile(N_WORDS, {"tag": np.int64})
    tags = [np.full(len(w), i) for i, w in enumerate(images)]
    inverted.add(images[:6], {"tag": tags[:6]})
    inverted.add(images[6:], {"tag": tags[6:]})
    inverted.remove([2])
    new_slot = np.r_[0, 1, 2:11]
    assert np.array_equal(inverted.payload["tag"], np.array([0, 1, *range(3, 12)])[inverted.image_slots])
    assert len(new_slot) == inverted.n_images


def test_multiple_assignment_weights(rng):
    images = random_images(rng, 15)
    inverted = InvertedFile(N_WORDS)
    inverted.add(images)
    words = rng.integers(0, N_WORDS, (10, 3))
    assert np.allclose(inverted.scores(words), dense_tfidf_scores(images, words.ravel()), atol=1e-6)


def test_empty_collection_and_unknown_words():
    inverted = InvertedFile(N_WORDS)
    assert inverted.scores(np.array([1, 2])).shape == (0,)
    with pytest.raises(ValueError, match="word ids"):
        inverted.add([np.array([N_WORDS])])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 10 ** 6)), min_size=1, max_size=12))
def test_any_add_remove_sequence_matches_brute_force(operations):
    rng = np.random.default_rng(len(operations))
    inverted, model = InvertedFile(N_WORDS), []
    for is_add, seed in operations:
        if is_add or not model:
            batch = random_images(np.random.default_rng(seed), 1 + seed % 4)
            inverted.add(batch)
            model += batch
        else:
            victim = seed % len(model)
            inverted.remove([victim])
            model.pop(victim)
    query = rng.integers(0, N_WORDS, 20)
    if model:
        assert np.allclose(inverted.scores(query), dense_tfidf_scores(model, query), atol=1e-6)


def test_state_dict_round_trip_and_validation(rng):
    inverted = InvertedFile(N_WORDS)
    inverted.add(random_images(rng, 10))
    meta, arrays = inverted.state_dict()
    copy = InvertedFile.from_state_dict(meta, arrays)
    query = rng.integers(0, N_WORDS, 20)
    assert np.array_equal(copy.scores(query), inverted.scores(query))
    bad = dict(arrays, image_slots=arrays["image_slots"] + 100)
    with pytest.raises(ValueError, match="do not exist"):
        InvertedFile.from_state_dict(meta, bad)
