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


def shard_of(starts: np.ndarray, slots):
    """Shard of each collection slot, given the (n_shards + 1,) first slot of each shard and the
    image count: an int for one slot, an (m,) int64 array for an array of slots."""
    shards = np.searchsorted(starts, np.asarray(slots, np.int64), side="right") - 1
    return int(shards) if np.ndim(shards) == 0 else shards


class _ShardView:
    """Stores of several shards read as one: ``parts`` in shard order, ``starts`` (n_shards + 1,)
    the first collection slot of each, then the image count."""

    def __init__(self, parts: Sequence, sizes: Sequence[int]):
        self.parts = list(parts)
        self.starts = np.cumsum([0] + list(sizes))

    def locate(self, slot: int) -> tuple[object, int]:
        """(the part of the shard owning collection slot ``slot``, the slot there)."""
        shard = shard_of(self.starts, slot)
        return self.parts[shard], int(slot - self.starts[shard])


class ShardedPostings(_ShardView):
    """The shards' inverted files read as one.

    Args:
        parts: each shard's inverted file, in shard order, weighing by the collection's statistics.
    """

    def __init__(self, parts: Sequence[InvertedFile]):
        super().__init__(parts, [part.n_images for part in parts])
        self.n_words = self.parts[0].n_words
        self.n_images = int(self.starts[-1])
        self.idf = self.parts[0].idf

    def query_vector(self, words: np.ndarray, weights: np.ndarray | None = None):
        """L2-normalised tf-idf vector of a query under the collection's idf: (unique words, values)."""
        return self.parts[0].query_vector(words, weights)

    def vector_scores(self, words: np.ndarray, values: np.ndarray) -> np.ndarray:
        """(n_images,) float32 cosine scores of a sparse query vector, shard after shard."""
        return np.concatenate([part.vector_scores(words, values) for part in self.parts])


class ShardedImages(_ShardView):
    """The shards' image stores read as one.

    Args:
        parts: each shard's image store, in shard order.
    """

    def __init__(self, parts: Sequence[ImageStore]):
        super().__init__(parts, [len(part) for part in parts])

    def features(self, slot: int) -> tuple[np.ndarray, np.ndarray]:
        """(keypoints (n, 4) float32, words (n,) int32) of collection slot ``slot``, from the shard owning it."""
        part, local = self.locate(slot)
        return part.features(local)


class ShardedDense(_ShardView):
    """The shards' dense descriptor indexes read as one (what ``rank_global`` reads but the graph).

    Args:
        parts: each shard's dense index, in shard order.
    """

    def __init__(self, parts: Sequence[DenseIndex]):
        super().__init__(parts, [len(part) for part in parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def scores(self, query: np.ndarray) -> np.ndarray:
        """(n,) float32 inner products with a (d,) query, shard after shard."""
        return np.concatenate([part.scores(query) for part in self.parts])

    def vectors_of(self, slots: np.ndarray) -> np.ndarray:
        """(len(slots), d) float32 vectors of collection slots ``slots``, each from its shard."""
        slots = np.asarray(slots, np.int64)
        shards = shard_of(self.starts, slots)
        return np.stack([self.parts[shard].vectors_of([slot - self.starts[shard]])[0]
                         for shard, slot in zip(shards, slots)]) if len(slots) else self.parts[0].vectors_of([])

    def region_scores(self, query: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """For each collection slot, the best inner product of ``query`` with its regions (see
        ``DenseIndex.region_scores``)."""
        slots = np.asarray(slots, np.int64)
        return np.array([self.parts[shard].region_scores(query, [slot - self.starts[shard]])[0]
                         for shard, slot in zip(shard_of(self.starts, slots), slots)], np.float32)
