"""Per-image data that re-ranking needs: image sizes, keypoints and visual words, compactly.

The forward counterpart of the inverted file: for image slot i, features
``offsets[i]:offsets[i+1]``. Descriptors are not kept; names live in
``index.names``; Hamming signatures only in the inverted file's postings
(``index.match_kernel.feature_signatures`` finds an image's).

Compact (8 bytes per keypoint instead of 16): x and y are fixed point, 1/65535 of
the image's width and height (0.016 px at 1024 px), scale and angle float16
(relative error under 0.05%); words take the smallest unsigned dtype that holds
the vocabulary (uint16 up to 65,536 words). ``features(slot)`` gives float32
keypoints and int32 words back.

Adding is amortised linear: new images wait in a pending list and are joined to
the arrays once, by ``consolidate()`` or the first read. The owning index calls
``consolidate()`` under its write lock, so concurrent readers never find pending work.
"""
from __future__ import annotations

import numpy as np

#: 2: compact keypoints and words; names in ``index.names``, signatures only in the postings.
#: Version 1 (names, float32 keypoints, int32 words, signatures) still loads, converted.
STATE_VERSION = 2
#: Fixed-point steps across an image side.
_XY_STEPS = 65535


def word_dtype(n_words: int) -> np.dtype:
    """The smallest unsigned integer dtype holding word ids below ``n_words``."""
    return np.dtype(np.uint16 if n_words <= 2 ** 16 else np.uint32)


def encode_keypoints(keypoints: np.ndarray, image_size) -> tuple[np.ndarray, np.ndarray]:
    """(n, 4) float32 x, y, scale, angle -> ((n, 2) uint16 x, y in 1/65535 of the width and height,
    (n, 2) float16 scale, angle); ``image_size`` (height, width) of the image, or (n, 2) per keypoint."""
    keypoints = np.asarray(keypoints, np.float32).reshape(-1, 4)
    width_height = np.maximum(np.asarray(image_size, np.float32), 1)[..., ::-1]
    xy = np.rint(keypoints[:, :2] / width_height * _XY_STEPS)
    return np.clip(xy, 0, _XY_STEPS).astype(np.uint16), keypoints[:, 2:].astype(np.float16)


def decode_keypoints(xy: np.ndarray, scale_angle: np.ndarray, image_size) -> np.ndarray:
    """Inverse of ``encode_keypoints``: (n, 4) float32."""
    keypoints = np.empty((len(xy), 4), np.float32)
    keypoints[:, :2] = xy * (np.maximum(np.asarray(image_size, np.float32), 1)[..., ::-1] / _XY_STEPS)
    keypoints[:, 2:] = scale_angle
    return keypoints


class ImageStore:
    """Image sizes, compact keypoints and visual words, by slot.

    Args:
        n_words: vocabulary size (chooses the words' dtype).
    """

    def __init__(self, n_words: int = 2 ** 32):
        self.word_dtype = word_dtype(n_words)
        self._n_images = 0
        self._image_sizes = np.zeros((0, 2), dtype=np.int32)
        self._offsets = np.zeros(1, dtype=np.int64)
        self._xy = np.zeros((0, 2), dtype=np.uint16)
        self._scale_angle = np.zeros((0, 2), dtype=np.float16)
        self._words = np.zeros(0, dtype=self.word_dtype)
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
    def n_features(self) -> int:
        return int(self.offsets[-1])

    def features(self, slot: int) -> tuple[np.ndarray, np.ndarray]:
        """(keypoints (n, 4) float32, words (n,) int32) of image ``slot``."""
        start, end = self.offsets[slot], self.offsets[slot + 1]
        keypoints = decode_keypoints(self._xy[start:end], self._scale_angle[start:end], self._image_sizes[slot])
        return keypoints, self._words[start:end].astype(np.int32)

    def add(self, image_sizes: list, keypoints: list[np.ndarray], words: list[np.ndarray]) -> None:
        """Append images (in the order they were added to the inverted file).

        Args:
            image_sizes: per image, (height, width) of the image its keypoints refer to.
            keypoints: per image, (n_i, 4) float32 x, y, scale, angle.
            words: per image, (n_i,) int word ids.
        """
        if not len(words):
            return
        encoded = [encode_keypoints(k, size) for k, size in zip(keypoints, image_sizes)]
        self._pending.append((
            np.asarray(image_sizes, np.int32).reshape(-1, 2),
            np.array([len(w) for w in words], np.int64),
            np.concatenate([e[0] for e in encoded]),
            np.concatenate([e[1] for e in encoded]),
            np.concatenate([np.asarray(w).ravel() for w in words]).astype(self.word_dtype)))
        self._n_images += len(words)

    def consolidate(self) -> None:
        """Join the pending images to the arrays (one concatenation for any number of adds)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        counts = np.concatenate([p[1] for p in pending])
        self._image_sizes = np.concatenate([self._image_sizes] + [p[0] for p in pending])
        self._offsets = np.r_[self._offsets, self._offsets[-1] + np.cumsum(counts, dtype=np.int64)]
        self._xy = np.concatenate([self._xy] + [p[2] for p in pending])
        self._scale_angle = np.concatenate([self._scale_angle] + [p[3] for p in pending])
        self._words = np.concatenate([self._words] + [p[4] for p in pending])

    @classmethod
    def concatenate(cls, stores: list["ImageStore"]) -> "ImageStore":
        """One store holding the images of ``stores`` in order (ValueError if their word dtypes differ)."""
        if len({store.word_dtype for store in stores}) != 1:
            raise ValueError("only image stores over one vocabulary can be concatenated")
        merged = cls()
        merged.word_dtype = stores[0].word_dtype
        merged._words = merged._words.astype(merged.word_dtype)
        for store in stores:
            store.consolidate()
            if len(store):
                merged._pending.append((store._image_sizes, np.diff(store._offsets), store._xy, store._scale_angle,
                                        store._words))
                merged._n_images += len(store)
        merged.consolidate()
        return merged

    def remove(self, slots) -> None:
        """Remove images by slot; the others keep their order."""
        self.consolidate()
        removed = np.zeros(len(self), dtype=bool)
        removed[np.asarray(slots, dtype=np.int64)] = True
        kept = ~np.repeat(removed, np.diff(self._offsets))
        self._image_sizes = self._image_sizes[~removed]
        self._offsets = np.r_[0, np.cumsum(np.diff(self._offsets)[~removed])].astype(np.int64)
        self._xy, self._scale_angle, self._words = self._xy[kept], self._scale_angle[kept], self._words[kept]
        self._n_images = len(self._image_sizes)

    def state_dict(self) -> tuple[dict, dict]:
        """(metadata, arrays) for persistence."""
        self.consolidate()
        meta = {"kind": "image-store", "version": STATE_VERSION, "n_images": len(self)}
        arrays = {"image_sizes": self._image_sizes, "feature_offsets": self._offsets, "keypoint_xy": self._xy,
                  "keypoint_scale_angle": self._scale_angle, "words": self._words}
        return meta, arrays

    @classmethod
    def from_state_dict(cls, meta: dict, arrays: dict) -> "ImageStore":
        """Rebuild from ``state_dict()`` output of version 1 or 2 (ValueError when inconsistent)."""
        version = meta.get("version")
        if meta.get("kind") != "image-store" or version not in (1, STATE_VERSION):
            raise ValueError(f"not a version-1 or -{STATE_VERSION} image store")
        n = int(meta["n_images"])
        offsets = np.asarray(arrays["feature_offsets"], np.int64)
        words = arrays["words"]
        if offsets.shape != (n + 1,) or arrays["image_sizes"].shape != (n, 2) \
                or np.any(np.diff(offsets) < 0) or offsets[0] != 0 or offsets[-1] != len(words):
            raise ValueError("image store arrays are inconsistent")
        store = cls()
        store._n_images, store._image_sizes, store._offsets = n, arrays["image_sizes"], offsets
        if version == STATE_VERSION:
            store.word_dtype = words.dtype
            store._xy, store._scale_angle, store._words = arrays["keypoint_xy"], arrays["keypoint_scale_angle"], words
            if store._xy.shape != (len(words), 2) or store._scale_angle.shape != (len(words), 2) \
                    or words.dtype not in (np.uint16, np.uint32):
                raise ValueError("image store keypoints do not match its words")
            return store
        if arrays["keypoints"].shape != (len(words), 4):  # version 1: float32 keypoints, int32 words
            raise ValueError("image store keypoints do not match its words")
        sizes = np.repeat(np.asarray(arrays["image_sizes"]), np.diff(offsets), axis=0)
        store._xy, store._scale_angle = encode_keypoints(arrays["keypoints"], sizes)
        store._words = np.asarray(words).astype(store.word_dtype)  # uint32: the vocabulary size is not saved here
        return store
