"""Views that let the re-ranking steps read the inverted files and image stores of several shards as one.

A collection split into shards (``cbir.sharded_index``) numbers its images shard after
shard: slot ``i`` of shard ``s`` is slot ``starts[s] + i`` of the collection. Each shard's
inverted file weighs by the collection's statistics (``InvertedFile.set_collection``), so
a score computed on a shard is the score of the whole collection. These views give
spatial verification and query expansion (``index.reranking``) what they read: the
features and signatures of one image, from the shard that owns it, and the scores of an
expanded query over every image, shard after shard (``index.match_kernel`` routes
Hamming scores and signatures through ``parts`` and ``locate``).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from index.image_store import ImageStore
from index.inverted_file import InvertedFile


class ShardedPostings:
    """The shards' inverted files read as one.

    Args:
        parts: each shard's inverted file, in shard order, weighing by the collection's statistics.
    """

    def __init__(self, parts: Sequence[InvertedFile]):
        self.parts = list(parts)
        self.starts = np.cumsum([0] + [part.n_images for part in self.parts])
        self.n_words = self.parts[0].n_words
        self.n_images = int(self.starts[-1])
        self.idf = self.parts[0].idf

    def locate(self, slot: int) -> tuple[InvertedFile, int]:
        """(the inverted file of the shard owning collection slot ``slot``, the slot there)."""
        shard = int(np.searchsorted(self.starts, slot, side="right")) - 1
        return self.parts[shard], int(slot - self.starts[shard])

    def query_vector(self, words: np.ndarray, weights: np.ndarray | None = None):
        """L2-normalised tf-idf vector of a query under the collection's idf: (unique words, values)."""
        return self.parts[0].query_vector(words, weights)

    def vector_scores(self, words: np.ndarray, values: np.ndarray) -> np.ndarray:
        """(n_images,) float32 cosine scores of a sparse query vector, shard after shard."""
        return np.concatenate([part.vector_scores(words, values) for part in self.parts])


class ShardedImages:
    """The shards' image stores read as one.

    Args:
        parts: each shard's image store, in shard order.
    """

    def __init__(self, parts: Sequence[ImageStore]):
        self.parts = list(parts)
        self.starts = np.cumsum([0] + [len(part) for part in self.parts])

    def features(self, slot: int) -> tuple[np.ndarray, np.ndarray]:
        """(keypoints (n, 4) float32, words (n,) int32) of collection slot ``slot``, from the shard owning it."""
        shard = int(np.searchsorted(self.starts, slot, side="right")) - 1
        return self.parts[shard].features(int(slot - self.starts[shard]))
