"""Hamming-embedding match kernel over the inverted file (Jegou et al. 2008, 2009).

A query feature and a database feature vote for the database image when they
share a visual word and their signatures are within ``threshold`` bits; the
vote weighs ``exp(-h^2 / sigma^2) * idf^2``, divided (burstiness) by the square
root of the votes the same query feature casts in that image. Image scores are
normalised by the tf-idf norms of both images, as for bag-of-words cosine.
"""
from __future__ import annotations

import numpy as np

from bovw.hamming import HammingConfig, hamming_distance
from index.inverted_file import InvertedFile

SIGNATURE = "signature"


def hamming_scores(inverted: InvertedFile, words: np.ndarray, signatures: np.ndarray,
                   config: HammingConfig = HammingConfig()) -> np.ndarray:
    """(n_images,) float32 HE scores of a query.

    Args:
        inverted: inverted file carrying a ``signature`` payload (uint64 per posting).
        words: (n, k) int word ids of the query's n features (k assignments).
        signatures: (n, k) uint64 signature of each feature relative to each word.
        config: threshold, sigma, burstiness.
    """
    words = np.asarray(words, np.int64).reshape(len(words), -1)
    feature = np.repeat(np.arange(len(words)), words.shape[1])
    flat_words, flat_signatures = words.ravel(), np.asarray(signatures, np.uint64).ravel()
    postings, owner = inverted.postings_of(flat_words)
    distance = hamming_distance(flat_signatures[owner], inverted.payload[SIGNATURE][postings])
    keep = distance <= config.threshold
    postings, owner, distance = postings[keep], owner[keep], distance[keep].astype(np.float64)
    slots = inverted.image_slots[postings].astype(np.int64)
    idf = inverted.idf.astype(np.float64)
    weight = np.exp(-distance ** 2 / config.sigma ** 2) * idf[flat_words[owner]] ** 2
    if config.burstiness and len(weight):
        _, inverse, counts = np.unique(feature[owner] * max(inverted.n_images, 1) + slots,
                                       return_inverse=True, return_counts=True)
        weight /= np.sqrt(counts[inverse])
    scores = np.bincount(slots, weights=weight, minlength=inverted.n_images)
    query_norm = np.linalg.norm(np.bincount(words[:, 0], minlength=inverted.n_words) * idf)
    norms = inverted.image_norms * max(query_norm, 1e-12)
    return np.divide(scores, norms, out=np.zeros(inverted.n_images), where=norms > 0).astype(np.float32)
