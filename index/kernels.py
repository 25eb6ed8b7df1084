"""Compiled loops over postings (numba): the inner loops of building and searching an inverted file.

Each kernel is one linear pass that numpy could only express with temporary
arrays the size of the postings (several GB at a million images). Postings are
laid out as in :mod:`index.inverted_file`: ``values[offsets[w]:offsets[w+1]]``
belong to word ``w``, image slots increasing within a word. Kernels are compiled
on first use and cached on disk (``cache=True``).
"""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def counting_order(words, n_words):
    """Stable order sorting ``words`` by value (counting sort).

    Args:
        words: (n,) int word ids in [0, n_words).
        n_words: vocabulary size.

    Returns:
        (order (n,) int64 with ``words[order]`` sorted, stable; counts (n_words,) int64).
    """
    counts = np.zeros(n_words, np.int64)
    for w in words:
        counts[w] += 1
    position = np.zeros(n_words, np.int64)
    for w in range(1, n_words):
        position[w] = position[w - 1] + counts[w - 1]
    order = np.empty(len(words), np.int64)
    for i in range(len(words)):
        w = words[i]
        order[position[w]] = i
        position[w] += 1
    return order, counts


@numba.njit(cache=True, nogil=True)
def merge_postings(old_offsets, old_values, new_offsets, new_values):
    """Per word, the old postings followed by the new ones.

    Args:
        old_offsets, new_offsets: (n_words + 1,) int64 word boundaries.
        old_values, new_values: (n_old,), (n_new,) postings (any one dtype).

    Returns:
        (n_old + n_new,) merged postings, same dtype.
    """
    out = np.empty(len(old_values) + len(new_values), old_values.dtype)
    k = 0
    for w in range(len(old_offsets) - 1):
        for i in range(old_offsets[w], old_offsets[w + 1]):
            out[k] = old_values[i]
            k += 1
        for i in range(new_offsets[w], new_offsets[w + 1]):
            out[k] = new_values[i]
            k += 1
    return out


@numba.njit(cache=True, nogil=True)
def document_frequency(offsets, slots):
    """(n_words,) int64 number of distinct images among each word's postings."""
    n_words = len(offsets) - 1
    df = np.zeros(n_words, np.int64)
    for w in range(n_words):
        for i in range(offsets[w], offsets[w + 1]):
            if i == offsets[w] or slots[i] != slots[i - 1]:
                df[w] += 1
    return df


@numba.njit(cache=True, nogil=True)
def squared_norms(offsets, slots, idf, n_images):
    """(n_images,) float64 ``sum_w (tf_{w,i} * idf_w)^2`` of every image's tf-idf vector."""
    norms = np.zeros(n_images, np.float64)
    for w in range(len(offsets) - 1):
        start, end = offsets[w], offsets[w + 1]
        i = start
        while i < end:
            j = i + 1
            while j < end and slots[j] == slots[i]:
                j += 1
            weight = (j - i) * np.float64(idf[w])
            norms[slots[i]] += weight * weight
            i = j
    return norms


@numba.njit(cache=True, nogil=True)
def accumulate_scores(offsets, slots, words, values, scores):
    """``scores[slot] += values[j]`` for every posting of ``words[j]``, in place.

    Args:
        offsets: (n_words + 1,) int64; slots: (n_postings,) int32.
        words: (m,) int64 query words; values: (m,) float weight of each.
        scores: (n_images,) float accumulator.
    """
    for j in range(len(words)):
        w = words[j]
        value = values[j]
        for i in range(offsets[w], offsets[w + 1]):
            scores[slots[i]] += value


@numba.njit(cache=True, nogil=True)
def _popcount64(x):
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return (x * np.uint64(0x0101010101010101)) >> np.uint64(56)


@numba.njit(cache=True, nogil=True)
def hamming_votes(offsets, slots, signatures, words, query_signatures, word_weights, threshold, sigma,
                  burstiness, inter_image, n_images):
    """Hamming-embedding votes of a query, summed per image: ``distance_votes`` with a vote at
    distance h <= ``threshold`` weighing ``exp(-h^2 / sigma^2)``.

    Args:
        offsets: (n_words + 1,) int64; slots: (n_postings,) int32;
        signatures: (n_postings,) uint64 posting signatures.
        words: (n, k) int64; query_signatures: (n, k) uint64; word_weights: (n, k) float64.

    Returns:
        (n_images,) float64 summed votes.
    """
    distance_weights = np.empty(max(threshold + 1, 0), np.float64)
    for h in range(len(distance_weights)):
        distance_weights[h] = np.exp(-np.float64(h) * h / (sigma * sigma))
    return distance_votes(offsets, slots, signatures, words, query_signatures, word_weights, distance_weights,
                          burstiness, inter_image, n_images)


@numba.njit(cache=True, nogil=True)
def distance_votes(offsets, slots, signatures, words, query_signatures, word_weights, distance_weights,
                   burstiness, inter_image, n_images):
    """Votes of a query's signatures for the images of the postings they nearly match, summed per image.

    Query row f (of ``words``) votes for the image of every posting of its words
    ``words[f, a]`` whose signature lies h < ``len(distance_weights)`` bits from
    ``query_signatures[f, a]``; the vote weighs ``distance_weights[h] * word_weights[f, a]``,
    divided by the square root of the number of votes f casts in that image when
    ``burstiness`` is set, and multiplied by ``log(n_images / images f votes in)`` when
    ``inter_image`` is set. The Hamming-embedding kernel (Gaussian weights) and ASMK*
    (one row per aggregated word, selectivity weights) are both this loop.

    Args:
        offsets: (n_words + 1,) int64; slots: (n_postings,) int32;
        signatures: (n_postings,) uint64 posting signatures.
        words: (n, k) int64; query_signatures: (n, k) uint64; word_weights: (n, k) float64.
        distance_weights: (t + 1,) float64 weight of a vote at Hamming distance 0..t.

    Returns:
        (n_images,) float64 summed votes.
    """
    threshold = len(distance_weights) - 1
    scores = np.zeros(n_images, np.float64)
    votes = np.zeros(n_images, np.int32)
    n_features, k = words.shape
    count = burstiness or inter_image
    for f in range(n_features):
        voted_images = 0
        if count:
            for a in range(k):
                w = words[f, a]
                for i in range(offsets[w], offsets[w + 1]):
                    if _popcount64(signatures[i] ^ query_signatures[f, a]) <= threshold:
                        if votes[slots[i]] == 0:
                            voted_images += 1
                        votes[slots[i]] += 1
        feature_weight = np.log(n_images / voted_images) if inter_image and voted_images else 1.0
        for a in range(k):
            w = words[f, a]
            for i in range(offsets[w], offsets[w + 1]):
                h = _popcount64(signatures[i] ^ query_signatures[f, a])
                if h <= threshold:
                    weight = distance_weights[h] * word_weights[f, a] * feature_weight
                    if burstiness:
                        weight /= np.sqrt(np.float64(votes[slots[i]]))
                    scores[slots[i]] += weight
        if count:
            for a in range(k):
                w = words[f, a]
                for i in range(offsets[w], offsets[w + 1]):
                    votes[slots[i]] = 0
    return scores


@numba.njit(cache=True, nogil=True)
def _kth_largest(scores, k):
    """The k-th largest value of ``scores`` (1 <= k <= len), by a size-k min-heap."""
    heap = np.empty(k, scores.dtype)
    for i in range(k):
        heap[i] = scores[i]
    heap.sort()  # a sorted array is a valid min-heap
    for i in range(k, len(scores)):
        x = scores[i]
        if x > heap[0]:
            heap[0] = x
            j = 0
            while True:  # sift down
                child = 2 * j + 1
                if child >= k:
                    break
                if child + 1 < k and heap[child + 1] < heap[child]:
                    child += 1
                if heap[child] >= heap[j]:
                    break
                heap[j], heap[child] = heap[child], heap[j]
                j = child
    return heap[0]


def top_indices(scores: np.ndarray, k: int | None) -> np.ndarray:
    """Indices of the ``k`` highest scores, best first, ties by index (None: all of them).

    Args:
        scores: (n,) float scores.
        k: how many; None or >= n ranks everything.

    Returns:
        (min(k, n),) int64 indices.
    """
    scores = np.asarray(scores)
    if k is None or k >= len(scores):
        return np.lexsort((np.arange(len(scores)), -scores))
    if k <= 0:
        return np.zeros(0, np.int64)
    candidates = np.flatnonzero(scores >= _kth_largest(scores, k))
    return candidates[np.lexsort((candidates, -scores[candidates]))][:k]


@numba.njit(cache=True, nogil=True)
def image_postings(offsets, image_slots, words, slot):
    """Where each feature of one image sits in the postings.

    Within a word, an image's postings are consecutive and in the order of its
    features, so the k-th feature of image ``slot`` quantized to word ``w`` is
    posting ``start(w, slot) + k``, ``start`` found by binary search. Where the image
    has fewer postings of ``w`` than features (one aggregated posting per (image, word),
    ASMK*), the features past the last posting map to that last one.

    Args:
        offsets: (n_words + 1,) int64.
        image_slots: (n_postings,) int32.
        words: (n,) int word of each of the image's features, in feature order.
        slot: the image's slot.

    Returns:
        (n,) int64 posting index of each feature.
    """
    n = len(words)
    order = np.argsort(words, kind="mergesort")
    result = np.empty(n, np.int64)
    k = 0
    while k < n:
        w = words[order[k]]
        lo, hi = offsets[w], offsets[w + 1]
        while lo < hi:
            mid = (lo + hi) // 2
            if image_slots[mid] < slot:
                lo = mid + 1
            else:
                hi = mid
        last = lo
        while last + 1 < offsets[w + 1] and image_slots[last + 1] == slot:
            last += 1
        rank = 0
        while k < n and words[order[k]] == w:
            result[order[k]] = min(lo + rank, last)
            rank += 1
            k += 1
    return result
