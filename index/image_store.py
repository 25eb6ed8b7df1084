"""Per-image data that search and re-ranking need: names, keypoints, word ids.

The forward counterpart of the inverted file: for image slot i, features
``offsets[i]:offsets[i+1]`` of the concatenated ``keypoints`` and ``words``
arrays. Descriptors are not kept. Names are stored as UTF-8 bytes plus offsets
so that nothing needs pickling.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

STATE_VERSION = 1


def _encode_names(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    encoded = [n.encode("utf-8", "surrogateescape") for n in names]
    offsets = np.r_[0, np.cumsum([len(e) for e in encoded])].astype(np.int64)
    return np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), offsets


def _decode_names(data: np.ndarray, offsets: np.ndarray) -> list[str]:
    raw = bytes(np.asarray(data, dtype=np.uint8))
    return [raw[offsets[i]:offsets[i + 1]].decode("utf-8", "surrogateescape")
            for i in range(len(offsets) - 1)]


class ImageStore:
    """Names, image sizes, keypoints and visual words of the indexed images, by slot."""

    def __init__(self):
        self.names: list[str] = []
        self.image_sizes = np.zeros((0, 2), dtype=np.int32)
        self.offsets = np.zeros(1, dtype=np.int64)
        self.keypoints = np.zeros((0, 4), dtype=np.float32)
        self.words = np.zeros(0, dtype=np.int32)
        self.signatures = np.zeros(0, dtype=np.uint64)
        self._slot_of_name: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.names)

    def slot(self, name: str) -> int:
        """Slot of the image called ``name`` (KeyError if absent)."""
        return self._slot_of_name[name]

    def slots(self, names) -> list[int]:
        """Slots of the images called ``names`` (KeyError naming the first unknown one)."""
        unknown = [name for name in names if name not in self._slot_of_name]
        if unknown:
            raise KeyError(f"no image named {unknown[0]!r} in the index")
        return [self._slot_of_name[name] for name in names]

    def new_images(self, items, name_of: dict, report) -> Iterator[tuple[str, object]]:
        """Yield ``(name, value)`` for each ``(path, value)`` whose name is neither indexed nor
        seen earlier in ``items``; the others are recorded as skipped in ``report``."""
        seen = set()
        for path, value in items:
            name = name_of[path]
            if name in self or name in seen:
                report.skipped.append((path, f"an image named {name!r} is already indexed"))
                continue
            seen.add(name)
            yield name, value

    def _reindex_names(self) -> None:
        self._slot_of_name = {n: i for i, n in enumerate(self.names)}

    def __contains__(self, name: str) -> bool:
        try:
            self.slot(name)
        except KeyError:
            return False
        return True

    def features(self, slot: int) -> tuple[np.ndarray, np.ndarray]:
        """(keypoints (n, 4) float32, words (n,) int32) of image ``slot``."""
        start, end = self.offsets[slot], self.offsets[slot + 1]
        return self.keypoints[start:end], self.words[start:end]

    def feature_signatures(self, slot: int) -> np.ndarray | None:
        """(n,) uint64 Hamming signatures of image ``slot``'s features, or None when not stored."""
        if len(self.signatures) != len(self.words):
            return None
        return self.signatures[self.offsets[slot]:self.offsets[slot + 1]]

    def add(self, names: list[str], image_sizes: list, keypoints: list[np.ndarray],
            words: list[np.ndarray], signatures: list[np.ndarray] | None = None) -> None:
        """Append images (same order as they were added to the inverted file), with the
        features' Hamming signatures when the index uses them."""
        if len(set(names)) != len(names) or any(n in self for n in names):
            raise ValueError("image names must be unique within an index")
        counts = [len(w) for w in words]
        self.names = self.names + list(names)
        self.image_sizes = np.concatenate([self.image_sizes, np.asarray(image_sizes, np.int32).reshape(-1, 2)])
        self.offsets = np.r_[self.offsets, self.offsets[-1] + np.cumsum(counts, dtype=np.int64)]
        self.keypoints = np.concatenate([self.keypoints]
                                        + [np.asarray(k, np.float32).reshape(-1, 4) for k in keypoints])
        self.words = np.concatenate([self.words] + [np.asarray(w, np.int32).ravel() for w in words])
        if signatures is not None:
            self.signatures = np.concatenate([self.signatures] + [np.asarray(s, np.uint64) for s in signatures])
        self._reindex_names()

    def remove(self, slots) -> None:
        """Remove images by slot; the others keep their order."""
        removed = np.zeros(len(self), dtype=bool)
        removed[np.asarray(slots, dtype=np.int64)] = True
        per_feature = np.repeat(removed, np.diff(self.offsets))
        self.names = [n for n, r in zip(self.names, removed) if not r]
        self.image_sizes = self.image_sizes[~removed]
        self.offsets = np.r_[0, np.cumsum(np.diff(self.offsets)[~removed])].astype(np.int64)
        self.keypoints = self.keypoints[~per_feature]
        if len(self.signatures) == len(self.words):
            self.signatures = self.signatures[~per_feature]
        self.words = self.words[~per_feature]
        self._reindex_names()

    def state_dict(self) -> tuple[dict, dict]:
        """(metadata, arrays) for persistence."""
        name_bytes, name_offsets = _encode_names(self.names)
        meta = {"kind": "image-store", "version": STATE_VERSION, "n_images": len(self)}
        arrays = {"name_bytes": name_bytes, "name_offsets": name_offsets, "image_sizes": self.image_sizes,
                  "feature_offsets": self.offsets, "keypoints": self.keypoints, "words": self.words,
                  "signatures": self.signatures}
        return meta, arrays

    @classmethod
    def from_state_dict(cls, meta: dict, arrays: dict) -> "ImageStore":
        """Rebuild from ``state_dict()`` output (raises ValueError when inconsistent)."""
        if meta.get("kind") != "image-store" or meta.get("version") != STATE_VERSION:
            raise ValueError(f"not a version-{STATE_VERSION} image store")
        n = int(meta["n_images"])
        store = cls()
        name_offsets = np.asarray(arrays["name_offsets"], np.int64)
        offsets = np.asarray(arrays["feature_offsets"], np.int64)
        if name_offsets.shape != (n + 1,) or offsets.shape != (n + 1,) \
                or arrays["image_sizes"].shape != (n, 2) \
                or np.any(np.diff(name_offsets) < 0) or np.any(np.diff(offsets) < 0) \
                or name_offsets[0] != 0 or name_offsets[-1] != len(arrays["name_bytes"]) \
                or offsets[0] != 0 or offsets[-1] != len(arrays["words"]) \
                or arrays["keypoints"].shape != (len(arrays["words"]), 4):
            raise ValueError("image store arrays are inconsistent")
        store.names = _decode_names(arrays["name_bytes"], name_offsets)
        if len(set(store.names)) != len(store.names):
            raise ValueError("image store holds duplicate names")
        store.image_sizes = arrays["image_sizes"]
        store.offsets = offsets
        store.keypoints = arrays["keypoints"]
        store.words = arrays["words"]
        store.signatures = arrays.get("signatures", np.zeros(0, np.uint64))
        if len(store.signatures) not in (0, len(store.words)):
            raise ValueError("image store signatures do not match its features")
        store._reindex_names()
        return store


def name_map(paths, names=None) -> dict[str, str]:
    """path -> name of each image to index (default: the path itself)."""
    names = list(names) if names is not None else [str(p) for p in paths]
    if len(names) != len(paths):
        raise ValueError("one name per path is needed")
    return dict(zip(map(str, paths), names))
