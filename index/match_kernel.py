"""Hamming-embedding match kernel over the inverted file (Jegou et al. 2008, 2009).

A query feature and a database feature vote for the database image when they
share a visual word and their signatures are within ``threshold`` bits; the
vote weighs ``exp(-h^2 / sigma^2) * idf^2``, divided (burstiness) by the square
root of the votes the same query feature casts in that image. Image scores are
normalised by the tf-idf norms of both images, as for bag-of-words cosine.
"""
from __future__ import annotations

import numpy as np

from bovw.hamming import HammingConfig
from index import kernels
from index.inverted_file import InvertedFile
from index.shard_views import ShardedPostings

SIGNATURE = "signature"


def hamming_scores(inverted: InvertedFile, words: np.ndarray, signatures: np.ndarray,
                   config: HammingConfig = HammingConfig()) -> np.ndarray:
    """(n_images,) float32 HE scores of a query.

    Args:
        inverted: inverted file carrying a ``signature`` payload (uint64 per posting), or the
            shards' inverted files (``ShardedPostings``).
        words: (n, k) int word ids of the query's n features (k assignments).
        signatures: (n, k) uint64 signature of each feature relative to each word.
        config: threshold, sigma, burstiness.
    """
    if isinstance(inverted, ShardedPostings):  # each shard weighs by the collection's statistics
        return np.concatenate([hamming_scores(part, words, signatures, config) for part in inverted.parts])
    if len(words) == 0:
        return np.zeros(inverted.n_images, np.float32)
    words = np.asarray(words, np.int64).reshape(len(words), -1)
    signatures = np.asarray(signatures, np.uint64).reshape(words.shape)
    idf = inverted.idf.astype(np.float64)
    scores = kernels.hamming_votes(inverted.offsets, inverted.image_slots, inverted.payload[SIGNATURE],
                                   words, signatures, idf[words] ** 2, config.threshold, config.sigma,
                                   config.burstiness, config.inter_image, inverted.n_images)
    return normalised_scores(inverted, scores, words[:, 0])


def normalised_scores(inverted: InvertedFile, scores: np.ndarray, query_words: np.ndarray) -> np.ndarray:
    """(n_images,) float32 ``scores`` divided by the tf-idf norms of each image and of the query.

    Args:
        inverted: the inverted file the (n_images,) float64 ``scores`` were summed over.
        scores: summed votes per image.
        query_words: (m,) int word of each query feature (repeats: term frequency).
    """
    unique, tf = np.unique(query_words, return_counts=True)
    query_norm = np.linalg.norm(tf * inverted.idf.astype(np.float64)[unique])
    norms = inverted.image_norms * max(query_norm, 1e-12)
    return np.divide(scores, norms, out=np.zeros(inverted.n_images), where=norms > 0).astype(np.float32)


def feature_signatures(inverted: InvertedFile, slot: int, words: np.ndarray) -> np.ndarray:
    """(n,) uint64 signatures of image ``slot``'s features, read from the postings (they are stored
    once, there; ``words`` (n,) are the image's words in feature order). With one aggregated posting
    per (image, word) (ASMK*), each feature gets its word's signature. ``inverted`` may be the
    shards' inverted files (``ShardedPostings``): the owning shard's postings are read."""
    if isinstance(inverted, ShardedPostings):
        inverted, slot = inverted.locate(slot)
    postings = kernels.image_postings(inverted.offsets, inverted.image_slots, np.asarray(words), int(slot))
    return inverted.payload[SIGNATURE][postings]
