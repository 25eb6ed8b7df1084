import numpy as np

from index import kernels


def test_counting_order_is_a_stable_sort(rng):
    words = rng.integers(0, 30, 500)
    order, counts = kernels.counting_order(words, 30)
    assert np.array_equal(order, np.argsort(words, kind="stable"))
    assert np.array_equal(counts, np.bincount(words, minlength=30))


def test_merge_puts_new_postings_after_old_ones_per_word():
    old_offsets, old = np.array([0, 2, 2, 3]), np.array([1, 4, 7], np.int32)
    new_offsets, new = np.array([0, 1, 3, 3]), np.array([9, 8, 9], np.int32)
    merged = kernels.merge_postings(old_offsets, old, new_offsets, new)
    assert merged.tolist() == [1, 4, 9, 8, 9, 7]


def test_top_k_matches_a_full_sort_with_ties_by_index(rng):
    scores = rng.integers(0, 20, 1000).astype(np.float32)  # many ties
    full = np.lexsort((np.arange(len(scores)), -scores))
    for k in (1, 7, 100, 999):
        assert np.array_equal(kernels.top_indices(scores, k), full[:k])
    assert np.array_equal(kernels.top_indices(scores, None), full)
    assert len(kernels.top_indices(scores, 0)) == 0


def test_hamming_votes_equal_a_direct_count(rng):
    n_words, n_images, k = 6, 5, 2
    words_db = rng.integers(0, n_words, 300)
    slots_db = rng.integers(0, n_images, 300).astype(np.int32)
    signatures_db = rng.integers(0, 2 ** 63, 300, dtype=np.uint64)
    order = np.lexsort((slots_db, words_db))
    offsets = np.r_[0, np.cumsum(np.bincount(words_db, minlength=n_words))]
    words = rng.integers(0, n_words, (20, k))
    signatures = signatures_db[rng.integers(0, 300, (20, k))] ^ np.uint64(0b1011)  # 3 bits away from a posting
    weights = rng.random((20, k))
    for burstiness, inter_image in ((False, False), (True, False), (True, True)):
        expected = np.zeros(n_images)
        for f in range(20):
            votes = []
            for a in range(k):
                for i in np.flatnonzero(words_db == words[f, a]):
                    h = bin(int(signatures_db[i] ^ signatures[f, a])).count("1")
                    if h <= 24:
                        votes.append((slots_db[i], np.exp(-h * h / 256.0) * weights[f, a]))
            per_image = np.bincount([s for s, _ in votes], minlength=n_images)
            feature_weight = np.log(n_images / np.count_nonzero(per_image)) if inter_image and votes else 1.0
            for slot, weight in votes:
                expected[slot] += weight * feature_weight / (np.sqrt(per_image[slot]) if burstiness else 1.0)
        got = kernels.hamming_votes(offsets, slots_db[order], signatures_db[order], words, signatures,
                                    weights, 24, 16.0, burstiness, inter_image, n_images)
        assert expected.sum() > 0
        assert np.allclose(got, expected)
