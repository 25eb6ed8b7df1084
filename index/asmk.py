"""ASMK* (Tolias, Avrithis & Jegou, ICCV 2013): the binarised aggregated selective match kernel.

An image is one binary signature per visual word it contains, not one per feature:
the residuals ``x - c_w`` of its descriptors assigned to word ``w`` are summed and
L2-normalised, then binarised like a Hamming-embedding descriptor (the learned
projection, compared with per-word medians; ``bovw.hamming``), the medians being
learned on L2-normalised residuals of training descriptors. Two images meet in the
words they share; with u = 1 - 2 h / B the normalised Hamming similarity of their
two B-bit signatures, the pair adds ``idf_w^2 * sigma(u)``, ``sigma(u) = sign(u) |u|^alpha``
for u >= tau and 0 below. Image scores are divided by ``sqrt(sum_w idf_w^2)`` of
both images, so that an image scores exactly 1 with itself (single assignment).

Aggregation is what removes burstiness: a repeated pattern is one signature.
Queries may assign each descriptor to several words (aggregated per word over
every assignment, as the asmk package does). Postings are the inverted file's
(``index.inverted_file``): one per (image, word), an image slot and a uint64
signature, scored by the same popcount loop as the Hamming-embedding kernel
(``index.kernels.distance_votes``).

A leaf module (no search options or ranking imported), so that ``index.search_options``
can hold an ``AsmkConfig``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bovw.hamming import BITS, HammingEmbedding
from index import kernels
from index.inverted_file import InvertedFile
from index.match_kernel import SIGNATURE, normalised_scores

STATE_VERSION = 1


@dataclass(frozen=True)
class AsmkConfig:
    """Selectivity of the ASMK* kernel (the asmk package's defaults, kept by ``sift-asmk``; ``blcf-asmk``
    uses alpha 1: its signatures aggregate many conv positions, and partial agreement is evidence).

    Attributes:
        alpha: exponent of the selectivity function ``sign(u) |u|^alpha``.
        threshold: tau: similarities u (in [-1, 1]) below it count 0; 0 keeps signatures
            that agree on at least half of their bits (h <= 32 of 64).
        verification_threshold: spatial verification keeps a correspondence when the query's and
            the image's aggregated signatures of the shared word lie within this many bits.
    """

    alpha: float = 3.0
    threshold: float = 0.0
    verification_threshold: int = 24

    def __post_init__(self):
        if self.alpha <= 0 or not -1 <= self.threshold <= 1 or not 0 <= self.verification_threshold <= BITS:
            raise ValueError(f"ASMK needs alpha > 0, a threshold in [-1, 1] and a verification threshold in "
                             f"[0, {BITS}], got {self}")

    def distance_weights(self) -> np.ndarray:
        """(t + 1,) float64 ``sigma(1 - 2 h / 64)`` for Hamming distances h = 0..t, t the largest
        distance whose similarity reaches the threshold."""
        u = 1 - 2 * np.arange(BITS + 1) / BITS
        u = u[u >= self.threshold - 1e-12]
        return np.sign(u) * np.abs(u) ** self.alpha


def aggregate(descriptors: np.ndarray, words: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per word, the L2-normalised sum of the residuals of the descriptors assigned to it.

    Args:
        descriptors: (n, d) float32 descriptors of one image.
        words: (n,) or (n, k) int words of each descriptor (k assignments each).
        centroids: (n_words, d) float32 word centres.

    Returns:
        (words (u,) int64 increasing, residuals (u, d) float32 of unit norm; a zero
        sum stays zero).
    """
    words = np.asarray(words, np.int64).reshape(len(descriptors), -1)
    rows = np.repeat(np.asarray(descriptors, np.float32), words.shape[1], axis=0)
    flat = words.ravel()
    order = np.argsort(flat, kind="stable")
    sorted_words = flat[order]
    starts = np.flatnonzero(np.r_[True, sorted_words[1:] != sorted_words[:-1]]) if len(flat) else np.zeros(0, int)
    if not len(starts):
        return np.zeros(0, np.int64), np.zeros((0, centroids.shape[1]), np.float32)
    sums = np.add.reduceat(rows[order] - centroids[sorted_words], starts, axis=0, dtype=np.float64)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return sorted_words[starts], (sums / np.where(norms > 0, norms, 1)).astype(np.float32)


def unit_residuals(descriptors: np.ndarray, words: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """(n, d) float32 L2-normalised residuals ``x - c_w`` of (n, d) descriptors and their (n,) words."""
    residuals = np.asarray(descriptors, np.float32) - centroids[np.asarray(words, np.int64)]
    norms = np.linalg.norm(residuals, axis=1, keepdims=True)
    return residuals / np.where(norms > 0, norms, 1)


class AsmkEmbedding:
    """What an ASMK* index learns and keeps: the binarisation of aggregated residuals (a Hamming
    embedding: projection (64, d), per-word medians (n_words, 64)). The kernel's selectivity is a
    search option (``AsmkConfig``, ``SearchOptions.asmk``).

    Args:
        embedding: projection and medians, learned on unit residuals (``learn``).
    """

    def __init__(self, embedding: HammingEmbedding):
        self.embedding = embedding

    @classmethod
    def learn(cls, descriptors: np.ndarray, words: np.ndarray, centroids: np.ndarray, seed: int = 0) -> "AsmkEmbedding":
        """Learn the medians of the projected unit residuals of (n, d) training descriptors assigned to
        their (n,) words (use other images than the indexed ones); ``seed`` draws the projection."""
        return cls(HammingEmbedding.learn(unit_residuals(descriptors, words, centroids), words, len(centroids), seed))

    def signatures(self, descriptors: np.ndarray, words: np.ndarray,
                   centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One image's aggregated signatures.

        Args:
            descriptors: (n, d) float32.
            words: (n,) or (n, k) int words of each descriptor.
            centroids: (n_words, d) float32 word centres.

        Returns:
            (words (u,) int64 increasing, signatures (u,) uint64).
        """
        unique, residuals = aggregate(descriptors, words, centroids)
        return unique, self.embedding.signatures(residuals, unique)

    def state_dict(self) -> tuple[dict, dict]:
        meta, arrays = self.embedding.state_dict()
        return {"kind": "asmk-embedding", "version": STATE_VERSION, "embedding": meta}, arrays

    @classmethod
    def from_state_dict(cls, meta: dict, arrays: dict) -> "AsmkEmbedding":
        # Saves made before the selectivity became a search option also hold a "config": ignored.
        if meta.get("kind") != "asmk-embedding" or meta.get("version") != STATE_VERSION:
            raise ValueError(f"not a version-{STATE_VERSION} ASMK embedding")
        return cls(HammingEmbedding.from_state_dict(meta["embedding"], arrays))


def asmk_scores(inverted: InvertedFile, words: np.ndarray, signatures: np.ndarray,
                config: AsmkConfig = AsmkConfig()) -> np.ndarray:
    """(n_images,) float32 ASMK* similarities of a query with every image.

    Args:
        inverted: inverted file with one posting per (image, word) and its ``signature`` payload.
        words: (u,) distinct int words of the query.
        signatures: (u,) uint64 aggregated signature of the query for each word.
        config: selectivity.
    """
    words = np.asarray(words, np.int64).reshape(-1, 1)
    idf = inverted.idf.astype(np.float64)
    scores = kernels.distance_votes(inverted.offsets, inverted.image_slots, inverted.payload[SIGNATURE], words,
                                    np.asarray(signatures, np.uint64).reshape(-1, 1), idf[words] ** 2,
                                    config.distance_weights(), False, False, inverted.n_images)
    return normalised_scores(inverted, scores, words[:, 0])
