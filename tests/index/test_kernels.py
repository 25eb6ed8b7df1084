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


def test_one_merge_of_many_batches_equals_merging_them_one_by_one(rng):
    """What InvertedFile.consolidate relies on: batches concatenated in order, counting-sorted and
    merged after existing postings at once, give what merging each batch in turn gives."""
    n_words = 30
    batches = [rng.integers(0, n_words, rng.integers(0, 60)) for _ in range(8)]
    ids = np.split(np.arange(sum(map(len, batches))), np.cumsum([len(b) for b in batches])[:-1])

    def merge(offsets, values, words, new_values):
        order, counts = kernels.counting_order(words, n_words)
        new_offsets = np.r_[0, np.cumsum(counts)]
        return offsets + new_offsets, kernels.merge_postings(offsets, values, new_offsets, new_values[order])

    base = merge(np.zeros(n_words + 1, np.int64), np.zeros(0, np.int32), batches[0], ids[0].astype(np.int32))
    one_by_one = base
    for words, batch_ids in zip(batches[1:], ids[1:]):
        one_by_one = merge(*one_by_one, words, batch_ids.astype(np.int32))
    at_once = merge(*base, np.concatenate(batches[1:]), np.concatenate(ids[1:]).astype(np.int32))
    assert np.array_equal(at_once[0], one_by_one[0]) and np.array_equal(at_once[1], one_by_one[1])
    assert len(at_once[1]) == sum(map(len, batches)) and len(base[1]) > 0


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
