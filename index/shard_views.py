"""Views that let the ranking steps read the stores of several shards as one collection.

A collection split into shards (``cbir.sharded_index``) numbers its images shard after
shard: slot ``i`` of shard ``s`` is slot ``starts[s] + i`` of the collection. Each shard's
inverted file weighs by the collection's statistics (``InvertedFile.set_collection``), so
a score computed on a shard is the score of the whole collection. These views give
spatial verification and query expansion (``index.reranking``) what they read: the
features and signatures of one image, from the shard that owns it, and the scores of an
expanded query over every image, shard after shard (``index.match_kernel`` routes
Hamming scores and signatures through ``parts`` and ``locate``). ``ShardedDense`` does the
same for ``index.ranking.rank_global`` over dense descriptor shards.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from index.dense_index import DenseIndex
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


class ShardedDense:
    """The shards' dense descriptor indexes read as one (what ``rank_global`` reads but the graph).

    Args:
        parts: each shard's dense index, in shard order.
    """

    def __init__(self, parts: Sequence[DenseIndex]):
        self.parts = list(parts)
        self.starts = np.cumsum([0] + [len(part) for part in self.parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _locate(self, slots: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.starts, np.asarray(slots, np.int64), side="right") - 1

    def scores(self, query: np.ndarray) -> np.ndarray:
        """(n,) float32 inner products with a (d,) query, shard after shard."""
        return np.concatenate([part.scores(query) for part in self.parts])

    def vectors_of(self, slots: np.ndarray) -> np.ndarray:
        """(len(slots), d) float32 vectors of collection slots ``slots``, each from its shard."""
        slots = np.asarray(slots, np.int64)
        shards = self._locate(slots)
        return np.stack([self.parts[shard].vectors_of([slot - self.starts[shard]])[0]
                         for shard, slot in zip(shards, slots)]) if len(slots) else self.parts[0].vectors_of([])

    def region_scores(self, query: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """For each collection slot, the best inner product of ``query`` with its regions (see
        ``DenseIndex.region_scores``)."""
        slots = np.asarray(slots, np.int64)
        return np.array([self.parts[shard].region_scores(query, [slot - self.starts[shard]])[0]
                         for shard, slot in zip(self._locate(slots), slots)], np.float32)
