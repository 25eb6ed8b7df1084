"""On-disk cache of extracted features (local features, conv maps), so a re-run does not re-extract.

One ``.npz`` file per (image file, extractor settings), named by a hash of the
image's absolute path, size, modification time and the extractor key. Files are
written atomically and read with ``allow_pickle=False``.
"""
from __future__ import annotations

import hashlib
import os
import tempfile

import numpy as np

from bovw.features import LocalFeatures


class FeatureCache:
    """Features of images, stored under ``directory``.

    Args:
        directory: cache folder, created when needed.
        extractor_key: identifies the extractor settings (``SiftOptions.key``).
    """

    def __init__(self, directory: str, extractor_key: str):
        self.directory = os.fspath(directory)
        self.extractor_key = extractor_key

    def _file(self, image_path: str) -> str:
        path = os.path.abspath(image_path)
        stat = os.stat(path)
        token = f"{path}|{stat.st_size}|{stat.st_mtime_ns}|{self.extractor_key}"
        digest = hashlib.sha1(token.encode("utf-8", "surrogateescape")).hexdigest()
        return os.path.join(self.directory, digest[:2], digest + ".npz")

    def get_arrays(self, image_path: str) -> dict[str, np.ndarray] | None:
        """Cached arrays of ``image_path``, or None when absent or unreadable."""
        try:
            with np.load(self._file(image_path), allow_pickle=False) as data:
                return {name: data[name] for name in data.files}
        except (OSError, KeyError, ValueError, EOFError):
            return None

    def put_arrays(self, image_path: str, arrays: dict[str, np.ndarray]) -> None:
        """Store named arrays for ``image_path`` (atomic: a crash leaves no partial file)."""
        file = self._file(image_path)
        os.makedirs(os.path.dirname(file), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(file), suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez(handle, **arrays)
            os.replace(tmp, file)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def get(self, image_path: str) -> LocalFeatures | None:
        """Cached local features of ``image_path``, or None when absent or unreadable."""
        data = self.get_arrays(image_path)
        try:
            return None if data is None else \
                LocalFeatures(data["keypoints"], data["descriptors"], tuple(data["image_size"]))
        except (KeyError, ValueError):
            return None

    def put(self, image_path: str, features: LocalFeatures) -> None:
        """Store the local features of ``image_path``."""
        self.put_arrays(image_path, {"keypoints": features.keypoints, "descriptors": features.descriptors,
                                     "image_size": np.asarray(features.image_size, np.int64)})
