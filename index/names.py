"""Image names by slot: the registry every searchable index keeps.

Slots are 0..n-1 in order of addition; removing images renumbers the ones that
follow, as the inverted file and the per-image stores do. Names are saved as
UTF-8 bytes plus offsets, so nothing needs pickling.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

STATE_VERSION = 1


def encode_names(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Names -> (bytes (b,) uint8, offsets (n + 1,) int64)."""
    encoded = [n.encode("utf-8", "surrogateescape") for n in names]
    offsets = np.r_[0, np.cumsum([len(e) for e in encoded])].astype(np.int64)
    return np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), offsets


def decode_names(data: np.ndarray, offsets: np.ndarray) -> list[str]:
    """Inverse of ``encode_names`` (ValueError when the offsets do not fit the bytes)."""
    offsets = np.asarray(offsets, np.int64)
    if offsets.ndim != 1 or len(offsets) == 0 or offsets[0] != 0 or offsets[-1] != len(data) \
            or np.any(np.diff(offsets) < 0):
        raise ValueError("name offsets are inconsistent with the name bytes")
    raw = bytes(np.asarray(data, dtype=np.uint8))
    return [raw[offsets[i]:offsets[i + 1]].decode("utf-8", "surrogateescape") for i in range(len(offsets) - 1)]


class ImageNames:
    """Unique image names, by slot."""

    def __init__(self, names: Iterable[str] = ()):
        self._names: list[str] = []
        self._slot_of: dict[str, int] = {}
        self.add(list(names))

    def __len__(self) -> int:
        return len(self._names)

    def __getitem__(self, slot: int) -> str:
        return self._names[slot]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __contains__(self, name: str) -> bool:
        return name in self._slot_of

    def slots(self, names: Iterable[str]) -> list[int]:
        """Slots of the images called ``names`` (KeyError naming the first unknown one)."""
        names = list(names)
        unknown = [name for name in names if name not in self._slot_of]
        if unknown:
            raise KeyError(f"no image named {unknown[0]!r} in the index")
        return [self._slot_of[name] for name in names]

    def add(self, names: list[str]) -> None:
        """Append names (ValueError if one is already present or repeated)."""
        if len(set(names)) != len(names) or any(n in self._slot_of for n in names):
            raise ValueError("image names must be unique within an index")
        for name in names:
            self._slot_of[name] = len(self._names)
            self._names.append(name)

    def remove(self, slots: Iterable[int]) -> None:
        """Remove names by slot; the others keep their order (and are renumbered)."""
        removed = set(int(s) for s in slots)
        self._names = [n for i, n in enumerate(self._names) if i not in removed]
        self._slot_of = {n: i for i, n in enumerate(self._names)}

    def state_dict(self) -> tuple[dict, dict]:
        """(metadata, arrays) for persistence."""
        data, offsets = encode_names(self._names)
        return {"kind": "image-names", "version": STATE_VERSION, "n_images": len(self)}, \
            {"bytes": data, "offsets": offsets}

    @classmethod
    def from_state_dict(cls, meta: dict, arrays: dict) -> "ImageNames":
        """Rebuild from ``state_dict()`` output (ValueError when inconsistent or duplicated)."""
        if meta.get("kind") != "image-names" or meta.get("version") != STATE_VERSION:
            raise ValueError(f"not a version-{STATE_VERSION} name registry")
        names = decode_names(arrays["bytes"], arrays["offsets"])
        if len(names) != int(meta["n_images"]):
            raise ValueError("name registry holds another number of names than its metadata says")
        if len(set(names)) != len(names):
            raise ValueError("name registry holds duplicate names")
        return cls(names)
