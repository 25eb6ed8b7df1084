"""Per-image data that re-ranking needs: image sizes, keypoints, visual words, signatures.

The forward counterpart of the inverted file: for image slot i, features
``offsets[i]:offsets[i+1]`` of the concatenated ``keypoints`` and ``words``
arrays (and of ``signatures`` when the index uses a Hamming embedding).
Descriptors are not kept; names live in ``index.names``.

Adding is amortised linear: new images wait in a pending list and are joined to
the arrays once, by ``consolidate()`` or the first read. The owning index calls
``consolidate()`` under its write lock, so concurrent readers never find pending work.
"""
from __future__ import annotations

import numpy as np

#: 2: names moved to ``index.names.ImageNames``; version-1 states (with names) still load.
STATE_VERSION = 2


class ImageStore:
    """Image sizes, keypoints, visual words and optional Hamming signatures, by slot."""

    def __init__(self):
        self._n_images = 0
        self._image_sizes = np.zeros((0, 2), dtype=np.int32)
        self._offsets = np.zeros(1, dtype=np.int64)
        self._keypoints = np.zeros((0, 4), dtype=np.float32)
        self._words = np.zeros(0, dtype=np.int32)
        self._signatures = np.zeros(0, dtype=np.uint64)
        self._pending: list[tuple] = []

    def __len__(self) -> int:
        return self._n_images

    @property
    def pending(self) -> bool:
        """Whether images were added since the arrays were last joined."""
        return bool(self._pending)

    @property
    def image_sizes(self) -> np.ndarray:
        """(n_images, 2) int32 (height, width) of each image as its keypoints refer to it."""
        self.consolidate()
        return self._image_sizes

    @property
    def offsets(self) -> np.ndarray:
        """(n_images + 1,) int64 feature offsets."""
        self.consolidate()
        return self._offsets

    @property
    def keypoints(self) -> np.ndarray:
        """(n_features, 4) float32 x, y, scale, angle."""
        self.consolidate()
        return self._keypoints

    @property
    def words(self) -> np.ndarray:
        """(n_features,) int32 visual word of each feature."""
        self.consolidate()
        return self._words

    @property
    def signatures(self) -> np.ndarray:
        """(n_features,) uint64 Hamming signatures, or (0,) when the index stores none."""
        self.consolidate()
        return self._signatures

    def features(self, slot: int) -> tuple[np.ndarray, np.ndarray]:
        """(keypoints (n, 4) float32, words (n,) int32) of image ``slot``."""
        start, end = self.offsets[slot], self.offsets[slot + 1]
        return self._keypoints[start:end], self._words[start:end]

    def feature_signatures(self, slot: int) -> np.ndarray | None:
        """(n,) uint64 Hamming signatures of image ``slot``'s features, or None when not stored."""
        if len(self.signatures) != len(self._words):
            return None
        return self._signatures[self._offsets[slot]:self._offsets[slot + 1]]

    def add(self, image_sizes: list, keypoints: list[np.ndarray], words: list[np.ndarray],
            signatures: list[np.ndarray] | None = None) -> None:
        """Append images (in the order they were added to the inverted file).

        Args:
            image_sizes: per image, (height, width).
            keypoints: per image, (n_i, 4) float32.
            words: per image, (n_i,) int word ids.
            signatures: per image, (n_i,) uint64, when the index uses a Hamming embedding.
        """
        if not len(words):
            return
        self._pending.append((
            np.asarray(image_sizes, np.int32).reshape(-1, 2),
            np.array([len(w) for w in words], np.int64),
            np.concatenate([np.asarray(k, np.float32).reshape(-1, 4) for k in keypoints]),
            np.concatenate([np.asarray(w, np.int32).ravel() for w in words]),
            None if signatures is None else np.concatenate([np.asarray(s, np.uint64).ravel() for s in signatures])))
        self._n_images += len(words)

    def consolidate(self) -> None:
        """Join the pending images to the arrays (one concatenation for any number of adds)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        counts = np.concatenate([p[1] for p in pending])
        self._image_sizes = np.concatenate([self._image_sizes] + [p[0] for p in pending])
        self._offsets = np.r_[self._offsets, self._offsets[-1] + np.cumsum(counts, dtype=np.int64)]
        self._keypoints = np.concatenate([self._keypoints] + [p[2] for p in pending])
        self._words = np.concatenate([self._words] + [p[3] for p in pending])
        if pending[0][4] is not None:
            self._signatures = np.concatenate([self._signatures] + [p[4] for p in pending])

    def remove(self, slots) -> None:
        """Remove images by slot; the others keep their order."""
        self.consolidate()
        removed = np.zeros(len(self), dtype=bool)
        removed[np.asarray(slots, dtype=np.int64)] = True
        per_feature = np.repeat(removed, np.diff(self._offsets))
        self._image_sizes = self._image_sizes[~removed]
        self._offsets = np.r_[0, np.cumsum(np.diff(self._offsets)[~removed])].astype(np.int64)
        self._keypoints = self._keypoints[~per_feature]
        if len(self._signatures) == len(self._words):
            self._signatures = self._signatures[~per_feature]
        self._words = self._words[~per_feature]
        self._n_images = len(self._image_sizes)

    def nbytes(self) -> dict[str, int]:
        """Bytes held per array."""
        self.consolidate()
        return {"image_sizes": self._image_sizes.nbytes, "feature_offsets": self._offsets.nbytes,
                "keypoints": self._keypoints.nbytes, "words": self._words.nbytes,
                "signatures": self._signatures.nbytes}

    def state_dict(self) -> tuple[dict, dict]:
        """(metadata, arrays) for persistence."""
        self.consolidate()
        meta = {"kind": "image-store", "version": STATE_VERSION, "n_images": len(self)}
        arrays = {"image_sizes": self._image_sizes, "feature_offsets": self._offsets,
                  "keypoints": self._keypoints, "words": self._words, "signatures": self._signatures}
        return meta, arrays

    @classmethod
    def from_state_dict(cls, meta: dict, arrays: dict) -> "ImageStore":
        """Rebuild from ``state_dict()`` output of version 1 or 2 (ValueError when inconsistent)."""
        if meta.get("kind") != "image-store" or meta.get("version") not in (1, STATE_VERSION):
            raise ValueError(f"not a version-1 or -{STATE_VERSION} image store")
        n = int(meta["n_images"])
        offsets = np.asarray(arrays["feature_offsets"], np.int64)
        if offsets.shape != (n + 1,) or arrays["image_sizes"].shape != (n, 2) \
                or np.any(np.diff(offsets) < 0) or offsets[0] != 0 or offsets[-1] != len(arrays["words"]) \
                or arrays["keypoints"].shape != (len(arrays["words"]), 4):
            raise ValueError("image store arrays are inconsistent")
        store = cls()
        store._n_images = n
        store._image_sizes = arrays["image_sizes"]
        store._offsets = offsets
        store._keypoints = arrays["keypoints"]
        store._words = arrays["words"]
        store._signatures = arrays.get("signatures", np.zeros(0, np.uint64))
        if len(store._signatures) not in (0, len(store._words)):
            raise ValueError("image store signatures do not match its features")
        return store
