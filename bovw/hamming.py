"""Hamming embedding (Jegou, Douze & Schmid, ECCV 2008): a binary signature per descriptor.

A random orthogonal projection maps a d-dimensional descriptor to 64 values;
bit j of its signature is set when value j exceeds the median of that value
over the training descriptors of the same visual word. Two descriptors of one
word whose signatures differ in few bits are likely to match.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STATE_VERSION = 1
BITS = 64


@dataclass(frozen=True)
class HammingConfig:
    """Hamming-embedding matching: query-time settings (the projection's seed is a build setting).

    Attributes:
        threshold: largest Hamming distance (of 64 bits) that still votes.
        sigma: a vote weighs ``exp(-h^2 / sigma^2)``.
        burstiness: divide each vote by the square root of the number of votes
            the same query feature casts in the same image (intra-image burstiness,
            Jegou, Douze & Schmid, CVPR 2009).
        inter_image: weigh each query feature's votes by ``log(N / N_f)``, N_f the
            images it votes in (inter-image burstiness, same paper).
    """

    threshold: int = 24
    sigma: float = 16.0
    burstiness: bool = True
    inter_image: bool = False


class HammingEmbedding:
    """Projection (64, d) and per-word medians (n_words, 64)."""

    def __init__(self, projection: np.ndarray, medians: np.ndarray):
        self.projection = np.asarray(projection, np.float32)
        self.medians = np.asarray(medians, np.float32)
        if self.projection.shape[0] != BITS or self.medians.shape[1:] != (BITS,):
            raise ValueError(f"projection {self.projection.shape} and medians {self.medians.shape} "
                             f"do not make {BITS}-bit signatures")

    @classmethod
    def learn(cls, descriptors: np.ndarray, words: np.ndarray, n_words: int, seed: int = 0) -> "HammingEmbedding":
        """Learn the medians from (n, d) training descriptors and their (n,) words.

        Words without training descriptors use the medians over all descriptors.
        """
        descriptors = np.asarray(descriptors, np.float32)
        if descriptors.shape[1] < BITS:
            raise ValueError(f"{descriptors.shape[1]}-d descriptors are too short for {BITS} bits")
        gaussian = np.random.default_rng(seed).standard_normal((descriptors.shape[1], descriptors.shape[1]))
        projection = np.linalg.qr(gaussian)[0][:BITS].astype(np.float32)
        projected = descriptors @ projection.T
        medians = np.tile(np.median(projected, axis=0), (n_words, 1)).astype(np.float32)
        order = np.argsort(words, kind="stable")
        sorted_words = np.asarray(words)[order]
        starts = np.flatnonzero(np.r_[True, sorted_words[1:] != sorted_words[:-1]])
        for start, end in zip(starts, np.r_[starts[1:], len(order)]):
            medians[sorted_words[start]] = np.median(projected[order[start:end]], axis=0)
        return cls(projection, medians)

    def signatures(self, descriptors: np.ndarray, words: np.ndarray) -> np.ndarray:
        """(n,) uint64 signatures of (n, d) descriptors, each relative to its (n,) word."""
        projected = np.asarray(descriptors, np.float32) @ self.projection.T
        bits = projected > self.medians[np.asarray(words, np.int64)]
        return np.packbits(bits, axis=1, bitorder="little").view(np.uint64).ravel()

    def state_dict(self) -> tuple[dict, dict]:
        return ({"kind": "hamming-embedding", "version": STATE_VERSION, "bits": BITS},
                {"projection": self.projection, "medians": self.medians})

    @classmethod
    def from_state_dict(cls, meta: dict, arrays: dict) -> "HammingEmbedding":
        if meta.get("kind") != "hamming-embedding" or meta.get("version") != STATE_VERSION:
            raise ValueError(f"not a version-{STATE_VERSION} Hamming embedding")
        return cls(arrays["projection"], arrays["medians"])


def hamming_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise Hamming distance of uint64 signatures (broadcasting)."""
    return np.bitwise_count(np.bitwise_xor(a, b))
