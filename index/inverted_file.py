"""Sparse inverted file: visual word -> postings, scored by tf-idf cosine similarity.

There is one posting per *feature*: ``image_slots[offsets[w]:offsets[w+1]]`` are
the image slots of the features quantized to word ``w``, in increasing slot
order (an image with tf occurrences of ``w`` appears tf times). Optional
per-feature payload arrays run parallel to ``image_slots`` (e.g. a Hamming
embedding signature per posting); they are kept aligned through add and remove.

Adding is amortised linear-time: ``add`` only buffers its images, and the next
read (or an explicit ``consolidate``) merges everything pending with one
counting sort and one linear pass over the postings, into exactly the layout
that adding the batches one at a time would give.

Scores are exact cosine similarities of L2-normalised tf-idf vectors:
``score(q, i) = sum_w q_w * idf_w * tf_{w,i} / ||d_i||`` with ``d_i`` the
unnormalised tf-idf vector of image i. idf and the image norms are recomputed
once per consolidation and after every remove.

A shard of a larger collection (``cbir.sharded_index``) weighs by the idf of the
whole collection: ``set_collection`` gives it the document frequencies reduced over
every shard, so its scores and norms equal those of the merged inverted file.
``concatenate`` is the merge: the images of several files, in order, in one.
"""
from __future__ import annotations

import threading
from typing import Sequence

import numpy as np

from index import kernels
from index.weighting import bow_vector, idf

#: 2: a shard's save, carrying the collection statistics it weighs by (``set_collection``); the
#: others are still saved as version 1, which engines without shards read.
STATE_VERSION = 2
#: ``add`` merges by itself once the pending postings exceed this and a quarter of the merged ones:
#: each merge then costs at most five times the postings it adds (linear overall), and pending
#: postings (8 bytes each, ~28 while merging) stay a fraction of the file (a 1M-image build of
#: 9e8 postings peaks near 9 GB instead of ~22 GB with everything pending).
AUTO_MERGE_POSTINGS = 1 << 24


class InvertedFile:
    """Postings of a collection of images over ``n_words`` visual words.

    Images are addressed by *slot*, 0..n_images-1 in order of addition;
    removing images renumbers the slots that follow (see ``remove``).

    ``add`` assigns slots at once but only buffers the postings; they are
    merged by ``consolidate``, which every read (``offsets``, ``image_slots``,
    ``payload``, the statistics, scores, ``remove``, ``state_dict``) calls first
    when something is ``pending``.

    Thread safety: the owner (a searchable index) holds its write lock during
    ``add``, ``remove`` and ``consolidate``, and calls ``consolidate()`` under
    that write lock before taking its read lock to search, so concurrent readers
    never find pending work and only read. A read that does find pending work
    consolidates first: fine single-threaded, and readers racing there merge once
    (an internal lock), but a read concurrent with ``add`` or ``remove`` is not
    supported.

    Args:
        n_words: vocabulary size.
        payload_dtypes: name -> dtype of per-feature payload arrays (optional).
    """

    def __init__(self, n_words: int, payload_dtypes: dict | None = None):
        self.n_words = int(n_words)
        self.n_images = 0
        self._offsets = np.zeros(self.n_words + 1, dtype=np.int64)
        self._image_slots = np.zeros(0, dtype=np.int32)
        self._payload = {name: np.zeros((0,), dtype) for name, dtype in (payload_dtypes or {}).items()}
        # Added, not yet merged: per add() call, its words (int32 below 2^31 words),
        # slots (int32) and payload arrays; _pending_images counts its images, _pending_postings its postings.
        self._pending_words, self._pending_slots = [], []
        self._pending_postings = 0
        self._pending_payload = {name: [] for name in self._payload}
        self._pending_images = 0
        self._consolidation_lock = threading.Lock()
        self._collection: tuple[np.ndarray, int] | None = None
        self._set_statistics(np.zeros(self.n_words, np.int64), np.zeros(0, np.float64))

    @property
    def pending(self) -> bool:
        """True when added images await ``consolidate`` (the next read does it)."""
        return self._pending_images > 0

    @property
    def offsets(self) -> np.ndarray:
        """(n_words + 1,) int64 word boundaries in ``image_slots``."""
        self.consolidate()
        return self._offsets

    @property
    def image_slots(self) -> np.ndarray:
        """(n_postings,) int32 image slot of every posting, by word then slot."""
        self.consolidate()
        return self._image_slots

    @property
    def payload(self) -> dict:
        """name -> (n_postings,) payload array, aligned with ``image_slots``."""
        self.consolidate()
        return self._payload

    @property
    def n_postings(self) -> int:
        return len(self.image_slots)

    @property
    def document_frequency(self) -> np.ndarray:
        """(n_words,) int64: images containing each word."""
        return self._statistics()[0]

    @property
    def idf(self) -> np.ndarray:
        """(n_words,) float32 idf of the current collection (of the whole collection for a shard)."""
        return self._statistics()[1]

    @property
    def collection(self) -> tuple[np.ndarray, int] | None:
        """(document frequency (n_words,) int64, images) of the whole collection this file is a shard
        of, set by ``set_collection``; None when the file is the whole collection."""
        return self._collection

    def set_collection(self, document_frequency: np.ndarray | None, n_images: int = 0) -> None:
        """Weigh by the idf of a whole collection this file is a shard of, and recompute the image norms.

        Args:
            document_frequency: (n_words,) int64 images of the whole collection holding each word (the
                sum of every shard's ``document_frequency``); None: weigh by this file's own.
            n_images: images of the whole collection.
        """
        self.consolidate()
        if document_frequency is not None:
            document_frequency = np.asarray(document_frequency, np.int64)
            if document_frequency.shape != (self.n_words,) or n_images < self.n_images:
                raise ValueError(f"collection statistics for {document_frequency.shape} words and {n_images} "
                                 f"images cannot cover a shard of {self.n_words} words and {self.n_images} images")
        self._collection = None if document_frequency is None else (document_frequency, int(n_images))
        self._stats = self._statistics_of(self._offsets, self._image_slots)

    def _idf_of(self, df: np.ndarray) -> np.ndarray:
        """(n_words,) float32 idf: the collection's when set, else that of ``df`` over this file's images."""
        return idf(*self._collection) if self._collection is not None else idf(df, self.n_images)

    @property
    def image_norms(self) -> np.ndarray:
        """(n_images,) float64 L2 norm of each image's tf-idf vector."""
        return self._statistics()[2]

    @property
    def imbalance_factor(self) -> float:
        """Vocabulary imbalance ``n_words * sum(p_w^2)``, p_w the share of postings (1 is perfect)."""
        counts = np.diff(self.offsets).astype(np.float64)
        total = counts.sum()
        return float(self.n_words * np.square(counts / total).sum()) if total else 0.0

    def _statistics(self):
        """(df, idf, image norms) of the consolidated postings (kept, so searches only read)."""
        self.consolidate()
        return self._stats

    def _statistics_of(self, offsets: np.ndarray, image_slots: np.ndarray) -> tuple:
        """(df (n_words,) int64, idf (n_words,) float32, norms (n_images,) float64) of postings
        ``offsets``, ``image_slots`` of all ``n_images`` images."""
        df = kernels.document_frequency(offsets, image_slots)
        weights = self._idf_of(df)
        return df, weights, np.sqrt(kernels.squared_norms(offsets, image_slots, weights, self.n_images))

    def _set_statistics(self, df: np.ndarray, norms: np.ndarray) -> None:
        self._stats = (df, self._idf_of(df), norms)

    @classmethod
    def concatenate(cls, files: Sequence["InvertedFile"]) -> "InvertedFile":
        """One inverted file holding the images of ``files`` in order (the slots of each file follow
        those of the one before): the layout that adding their images in that order gives.

        One stable counting sort of every posting by word, so linear in the postings. The result
        weighs by its own statistics (not by any file's ``collection``).

        Raises:
            ValueError: the files have other vocabulary sizes or payloads.
        """
        first = files[0]
        if any(f.n_words != first.n_words or sorted(f.payload) != sorted(first.payload) for f in files):
            raise ValueError("only inverted files over one vocabulary with the same payloads can be concatenated")
        merged = cls(first.n_words, {name: values.dtype for name, values in first.payload.items()})
        starts = np.cumsum([0] + [f.n_images for f in files])
        words = np.concatenate([np.repeat(np.arange(f.n_words, dtype=np.int32), np.diff(f.offsets)) for f in files])
        order, counts = kernels.counting_order(words, first.n_words)
        merged.n_images = int(starts[-1])
        merged._offsets = np.r_[0, np.cumsum(counts)].astype(np.int64)
        merged._image_slots = np.concatenate([f.image_slots.astype(np.int64) + start
                                              for f, start in zip(files, starts)])[order].astype(np.int32)
        merged._payload = {name: np.concatenate([f.payload[name] for f in files])[order] for name in first.payload}
        merged._stats = merged._statistics_of(merged._offsets, merged._image_slots)
        return merged

    def add(self, words_per_image: list[np.ndarray], payload_per_image: dict | None = None) -> np.ndarray:
        """Append images; returns their slots. Their postings wait for ``consolidate``.

        Args:
            words_per_image: per image, (n_i,) int word ids of its features.
            payload_per_image: name -> list of per-image (n_i,) payload arrays,
                for every payload this inverted file carries.

        Returns:
            (m,) int64 slots of the new images.
        """
        counts = np.array([len(w) for w in words_per_image], dtype=np.int64)
        slots = np.arange(self.n_images, self.n_images + len(words_per_image), dtype=np.int64)
        payload_per_image = payload_per_image or {}
        if set(payload_per_image) != set(self._payload):
            raise ValueError(f"payload {sorted(payload_per_image)} given, {sorted(self._payload)} expected")
        if not len(words_per_image):
            return slots
        words = np.concatenate([np.asarray(w, np.int64).ravel() for w in words_per_image])
        if len(words) and (words.min() < 0 or words.max() >= self.n_words):
            raise ValueError(f"word ids must lie in [0, {self.n_words})")
        for name, values in payload_per_image.items():
            if len(values) != len(counts) or np.any(np.array([len(v) for v in values]) != counts):
                raise ValueError(f"payload {name!r} does not match the words image by image")
        for name, values in payload_per_image.items():
            self._pending_payload[name].append(np.concatenate(values).astype(self._payload[name].dtype, copy=False))
        self._pending_words.append(words.astype(np.int32) if self.n_words <= 2 ** 31 else words)
        self._pending_slots.append(np.repeat(slots, counts).astype(np.int32))
        self._pending_images += len(words_per_image)
        self._pending_postings += len(words)
        self.n_images += len(words_per_image)
        if self._pending_postings > max(len(self._image_slots) // 4, AUTO_MERGE_POSTINGS):
            self.consolidate()
        return slots

    def consolidate(self) -> None:
        """Merge every pending image into the postings, then recompute the statistics.

        One stable counting sort of the pending postings by word and one linear
        merge after the existing postings of each word: the result is exactly
        that of adding the batches one at a time. A no-op when nothing is pending.
        """
        if not self._pending_images:
            return
        with self._consolidation_lock:
            if not self._pending_images:  # a racing reader merged meanwhile
                return
            order, new_counts = kernels.counting_order(np.concatenate(self._pending_words), self.n_words)
            new_offsets = np.r_[0, np.cumsum(new_counts)].astype(np.int64)

            def merged(old: np.ndarray, pending: list[np.ndarray]) -> np.ndarray:
                return kernels.merge_postings(self._offsets, old, new_offsets, np.concatenate(pending)[order])

            image_slots = merged(self._image_slots, self._pending_slots)
            payload = {name: merged(values, self._pending_payload[name]) for name, values in self._payload.items()}
            offsets = self._offsets + new_offsets
            stats = self._statistics_of(offsets, image_slots)
            # Nothing changes until here, so a failed merge (out of memory) leaves the work pending.
            self._offsets, self._image_slots, self._payload, self._stats = offsets, image_slots, payload, stats
            self._pending_words, self._pending_slots, self._pending_postings = [], [], 0
            self._pending_payload = {name: [] for name in self._payload}
            self._pending_images = 0  # last: readers that see nothing pending find everything merged

    def remove(self, slots) -> np.ndarray:
        """Remove images; the remaining ones keep their order and are renumbered.

        Returns:
            (n_images_before,) int64 map old slot -> new slot (-1 if removed).
        """
        self.consolidate()
        removed = np.zeros(self.n_images, dtype=bool)
        removed[np.asarray(slots, dtype=np.int64)] = True
        new_slot = np.cumsum(~removed) - 1
        new_slot[removed] = -1
        keep = ~removed[self._image_slots]
        kept_before = np.r_[0, np.cumsum(keep)]
        self._image_slots = new_slot[self._image_slots[keep]].astype(np.int32)
        self._payload = {name: values[keep] for name, values in self._payload.items()}
        self._offsets = kept_before[self._offsets].astype(np.int64)
        self.n_images = int((~removed).sum())
        self._stats = self._statistics_of(self._offsets, self._image_slots)
        return new_slot

    def query_vector(self, words: np.ndarray, weights: np.ndarray | None = None):
        """L2-normalised tf-idf vector of a query: (unique words, values)."""
        words = np.asarray(words, dtype=np.int64).ravel()
        weights = np.ones(len(words), np.float64) if weights is None else np.asarray(weights).ravel()
        return bow_vector(words, weights, self.idf)

    def scores(self, words: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Cosine similarity of the query's tf-idf vector with every image.

        Args:
            words: (m,) or (m, k) int word ids of the query features (k words
                per feature under multiple assignment).
            weights: same shape, weight of each assignment (default 1).

        Returns:
            (n_images,) float32 scores in [0, 1].
        """
        return self.vector_scores(*self.query_vector(words, weights))

    def vector_scores(self, words: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Scores of a query given as a sparse L2-normalised tf-idf vector.

        Args:
            words: (u,) unique int word ids.
            values: (u,) float tf-idf weights (unit L2 norm).

        Returns:
            (n_images,) float32 cosine similarities.
        """
        words = np.asarray(words, dtype=np.int64)
        scores = np.zeros(self.n_images, np.float64)
        kernels.accumulate_scores(self.offsets, self.image_slots, words,
                                  np.asarray(values, np.float64) * self.idf[words], scores)
        norms = self.image_norms
        return np.divide(scores, norms, out=np.zeros(self.n_images), where=norms > 0).astype(np.float32)

    def state_dict(self) -> tuple[dict, dict]:
        """(metadata, arrays) for persistence; see ``from_state_dict``."""
        meta = {"kind": "inverted-file", "version": 1 if self._collection is None else STATE_VERSION,
                "n_words": self.n_words,
                "n_images": self.n_images, "payload": sorted(self.payload)}
        df, _, norms = self._statistics()
        arrays = {"offsets": self.offsets, "image_slots": self.image_slots,
                  "document_frequency": df, "image_norms": norms}
        if self._collection is not None:  # a shard: its norms are those of the collection's idf
            meta["collection_images"] = self._collection[1]
            arrays["collection_document_frequency"] = self._collection[0]
        arrays.update({f"payload_{name}": values for name, values in self.payload.items()})
        return meta, arrays

    @classmethod
    def from_state_dict(cls, meta: dict, arrays: dict) -> "InvertedFile":
        """Rebuild from ``state_dict()`` output, checking consistency (raises ValueError)."""
        if meta.get("kind") != "inverted-file" or meta.get("version") not in (1, STATE_VERSION):
            raise ValueError(f"not a version-1 or -{STATE_VERSION} inverted file")
        payload = {name: arrays[f"payload_{name}"] for name in meta.get("payload", [])}
        inverted = cls(int(meta["n_words"]), {name: values.dtype for name, values in payload.items()})
        inverted.n_images = int(meta["n_images"])
        offsets = np.asarray(arrays["offsets"], dtype=np.int64)
        slots = np.asarray(arrays["image_slots"])
        if offsets.shape != (inverted.n_words + 1,) or offsets[0] != 0 or offsets[-1] != len(slots) \
                or np.any(np.diff(offsets) < 0):
            raise ValueError("inverted file offsets are inconsistent with its postings")
        # The compiled kernels index by slot without bounds checks: every slot is checked here.
        if slots.dtype != np.int32 or (len(slots) and (slots.min() < 0 or slots.max() >= inverted.n_images)):
            raise ValueError("inverted file postings refer to images that do not exist")
        inverted._offsets, inverted._image_slots = offsets, slots
        for name, values in payload.items():
            if len(values) != len(slots):
                raise ValueError(f"payload {name!r} does not match the postings")
        inverted._payload = payload
        # Saved statistics; absent from saves made before the statistics were saved
        # (early format-1 saves of 0.1.0), for which they are recomputed.
        if meta["version"] == STATE_VERSION:
            inverted._collection = (np.asarray(arrays["collection_document_frequency"]), int(meta["collection_images"]))
            if inverted._collection[0].shape != (inverted.n_words,) or inverted._collection[1] < inverted.n_images:
                raise ValueError("inverted file collection statistics do not match its words and images")
        if "document_frequency" in arrays:
            df, norms = np.asarray(arrays["document_frequency"]), np.asarray(arrays["image_norms"])
            if df.shape != (inverted.n_words,) or norms.shape != (inverted.n_images,):
                raise ValueError("inverted file statistics do not match its words and images")
            inverted._set_statistics(df, norms)
        else:
            inverted._stats = inverted._statistics_of(offsets, slots)
        return inverted
