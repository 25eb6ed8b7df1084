"""On-disk cache of extracted features (local features, conv maps), so a re-run does not re-extract.

The cache is also what makes an interrupted build resume: features are stored as
soon as each image is extracted, so a build run again over the same images only
extracts those that are not in the cache yet.

**Keying.** One ``.npz`` file per (image content, extractor settings), stored as
``<directory>/<extractor key>/<2 hex>/<40 hex>.npz``. The name is a BLAKE2b hash
of the image file's *bytes* and of the extractor key (``SiftOptions.key``,
``BackboneOptions.key``, ...), so a moved, copied or renamed image still hits
the cache and a modified one misses. Hashing reads the whole image file: about
0.5 ms for a 1024-px JPEG, against 0.8 s of SIFT extraction, so nothing is
memoised (``benchmarks/results/feature_cache.md``).

**What is stored.** ``put_arrays`` stores the given named arrays unchanged
(``cnn.feature_maps`` puts float16 maps). ``put`` stores ``LocalFeatures``:

- ``keypoints``: (n, 4) float32, unchanged (x, y, scale, angle).
- ``image_size``: (2,) int64.
- RootSIFT descriptors, losslessly: OpenCV's SIFT vectors are integers in
  [0, 255] and RootSIFT is ``sqrt(v / sum(v))`` of them, so the integers are
  recovered and kept as ``descriptor_counts`` (n, d) uint8; ``get`` recomputes
  ``root_sift`` from them and gets the float32 descriptors back bit for bit
  (``put`` checks it for every row; the rare row that does not come back
  exactly is kept in float32 as ``descriptor_rows`` (m,) int64 and
  ``descriptor_values`` (m, d) float32).
- Any other descriptors (BLCF's L2-normalised conv activations) as float16
  ``descriptors`` (n, d) (the whole array in float32 if a value is out of
  float16's range): rounding error at most 2**-11 of a value, which changes
  about 0.01% of BLCF's visual words, so a build from the cache can differ
  very slightly from a build from freshly extracted features.

A SIFT feature takes about 112 bytes (about 97 for the compressed integers, 13
for the keypoint, 2% more than at numpy's zlib level): 0.28 MB for a 1024-px
photo at the pipelines' budget of 2,500 features, 1.2 MB for its ~10,700
features without a budget (5.6 MB in the format before issue 12;
``benchmarks/results/feature_cache.md``, ``feature_cache_level.md``).

Everything is written as ``np.savez_compressed`` writes it (a zip of ``.npy``
files, deflated) but at zlib level ``COMPRESSION_LEVEL``, atomically (a
temporary file then a rename), and read with ``np.load(allow_pickle=False)``,
which reads any level: entries written before at numpy's level 6 stay valid,
under the same names. A missing, truncated or corrupted file reads as a miss.
Files of the previous format (named after the image's path and modification
time, directly under ``<2 hex>/``) are never read; ``cache_info`` reports them
under ``OLD_FORMAT_KEY`` and eviction or ``clean_cache`` removes them like any
unused entry.

**Limit.** ``FeatureCache(..., max_bytes=N)`` keeps the whole directory (every
extractor key) under N bytes: when a ``put`` makes it larger, the least
recently used entries are removed until it is at most ``EVICT_TO`` of N. An
entry's use time is its file's modification time, set by ``put`` and by every
``get``/``get_arrays`` hit. ``cache_info`` describes a cache directory and
``clean_cache`` removes entries by age or down to a size.
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
import threading
import time
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np

from bovw.features import LocalFeatures, root_sift

#: Size bound of a cache directory when the caller gives none: ``$CBIR_CACHE_MAX_BYTES`` or 20 GiB
#: (about 17,000 1024-px photos of SIFT features, 4,000 of BLCF maps).
DEFAULT_MAX_BYTES = 20 * 2 ** 30


def default_max_bytes() -> int:
    """``$CBIR_CACHE_MAX_BYTES`` (bytes) or ``DEFAULT_MAX_BYTES``."""
    return int(os.environ.get("CBIR_CACHE_MAX_BYTES", DEFAULT_MAX_BYTES))


#: Bumped whenever the stored layout changes: it is part of every file name.
FORMAT = 2
#: zlib level of the files written. Against numpy's level 6 (``savez_compressed``), on 1024-px
#: photos (benchmarks/results/feature_cache_level.md): writes 2.4-2.9x faster (SIFT at the
#: 2,500 budget 22 ms instead of 52; without a budget 87 instead of 212; CNN maps 61 instead
#: of 150), files 2.4% (SIFT) to 10.6% (float16 CNN maps and BLCF) larger, reads as fast.
COMPRESSION_LEVEL = 1
#: Eviction removes entries until the cache is at most this fraction of ``max_bytes``.
EVICT_TO = 0.9
#: ``cache_info`` key of the files left by the previous format.
OLD_FORMAT_KEY = "(old format)"
#: Temporary files older than this (seconds) are leftovers of killed writers.
STALE_TMP_S = 3600.0

_CHUNK = 1 << 20
_FLOAT16_MAX = float(np.finfo(np.float16).max)
#: OpenCV scales a SIFT vector to L2 norm 512 before rounding it to integers.
_SIFT_NORM = 512.0
#: How far from its first guess the largest integer of a SIFT vector is searched.
_COUNT_OFFSETS = (0, -1, 1, -2, 2, -3, 3)
#: Rows tried first: descriptors whose first rows are not RootSIFT are stored as floats.
_PROBE_ROWS = 16
_SAFE_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]{0,99}")
_UNREADABLE = (OSError, ValueError, KeyError, IndexError, EOFError, zipfile.BadZipFile, zlib.error)


def _key_folder(extractor_key: str) -> str:
    """Folder name of an extractor key: the key itself when it is a safe name."""
    if _SAFE_KEY.fullmatch(extractor_key):
        return extractor_key
    digest = hashlib.blake2b(extractor_key.encode("utf-8", "surrogateescape"), digest_size=6).hexdigest()
    return re.sub(r"[^A-Za-z0-9._+=-]", "_", extractor_key)[:80] + "-" + digest


def _rootsift_counts(descriptors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The SIFT integer vectors whose ``root_sift`` is exactly ``descriptors``.

    Args:
        descriptors: (n, d) float32.

    Returns:
        counts (n, d) uint8 and exact (n,) bool: ``root_sift(counts[i])`` equals
        ``descriptors[i]`` bit for bit where ``exact[i]`` (other rows of counts are
        meaningless).
    """
    squared = descriptors.astype(np.float64) ** 2  # = v / sum(v), v the SIFT integers
    peak = squared.max(axis=1)
    norm = np.linalg.norm(squared, axis=1)
    # largest integer of each vector, guessed from OpenCV's scaling to L2 norm 512
    guess = np.rint(peak * _SIFT_NORM / np.where(norm > 0, norm, 1.0))
    counts = np.zeros(descriptors.shape, np.uint8)
    exact = np.zeros(len(descriptors), bool)
    bits = descriptors.view(np.uint32)
    for offset in _COUNT_OFFSETS:
        rows = np.flatnonzero(~exact)
        if not len(rows):
            break
        largest = np.clip(guess[rows] + offset, 1, 255)
        scale = np.divide(largest, peak[rows], out=np.zeros(len(rows)), where=peak[rows] > 0)
        values = np.rint(squared[rows] * scale[:, None])
        fits = values.max(axis=1) <= 255
        candidate = values.astype(np.uint8)
        back = root_sift(candidate.astype(np.float32)).view(np.uint32)
        good = fits & np.all(back == bits[rows], axis=1)
        counts[rows[good]] = candidate[good]
        exact[rows[good]] = True
    return counts, exact


def write_npz(handle, arrays: dict[str, np.ndarray], level: int = COMPRESSION_LEVEL) -> None:
    """Write ``arrays`` to the binary file ``handle`` as ``np.savez_compressed`` does, at zlib
    ``level`` (0-9), without pickles; ``np.load`` reads it back."""
    with zipfile.ZipFile(handle, mode="w", compression=zipfile.ZIP_DEFLATED, compresslevel=level,
                         allowZip64=True) as archive:
        for name, value in arrays.items():
            with archive.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)


def _encode_descriptors(descriptors: np.ndarray) -> dict[str, np.ndarray]:
    """Stored arrays of (n, d) float32 descriptors (see the module docstring)."""
    if len(descriptors) and np.all(np.isfinite(descriptors)) and descriptors.min() >= 0 \
            and descriptors.max() <= 1 and _rootsift_counts(descriptors[:_PROBE_ROWS])[1].mean() >= 0.5:
        counts, exact = _rootsift_counts(descriptors)
        if exact.mean() >= 0.5:
            missed = np.flatnonzero(~exact)
            return {"descriptor_counts": counts, "descriptor_rows": missed.astype(np.int64),
                    "descriptor_values": descriptors[missed]}
    small = np.all(np.isfinite(descriptors)) and np.all(np.abs(descriptors) <= _FLOAT16_MAX)
    return {"descriptors": descriptors.astype(np.float16 if small else np.float32)}


def _decode_descriptors(data: dict[str, np.ndarray]) -> np.ndarray:
    """(n, d) float32 descriptors from what ``_encode_descriptors`` stored."""
    if "descriptor_counts" not in data:
        return data["descriptors"].astype(np.float32)
    descriptors = root_sift(data["descriptor_counts"].astype(np.float32))
    descriptors[data["descriptor_rows"]] = data["descriptor_values"]
    return descriptors


@dataclass
class _Entry:
    """One cache file: path, size in bytes, last use (mtime, seconds), extractor key folder."""

    path: str
    size: int
    used: float
    key: str


def _scan(directory: str) -> tuple[list[_Entry], list[_Entry]]:
    """(cache entries, temporary files) under ``directory`` (both empty when it is absent)."""
    entries, temporary = [], []

    def add(item: os.DirEntry, key: str) -> None:
        try:
            stat = item.stat()
        except OSError:  # removed meanwhile
            return
        target = entries if item.name.endswith(".npz") else temporary
        target.append(_Entry(item.path, stat.st_size, stat.st_mtime, key))

    def children(path: str) -> list[os.DirEntry]:
        try:
            with os.scandir(path) as listing:
                return list(listing)
        except OSError:
            return []

    for top in children(directory):
        if not top.is_dir(follow_symlinks=False):
            continue
        for sub in children(top.path):
            if sub.is_file(follow_symlinks=False) and sub.name.endswith((".npz", ".tmp")):
                add(sub, OLD_FORMAT_KEY)
            elif sub.is_dir(follow_symlinks=False):
                for item in children(sub.path):
                    if item.is_file(follow_symlinks=False) and item.name.endswith((".npz", ".tmp")):
                        add(item, top.name)
    return entries, temporary


def _remove(entries: list[_Entry]) -> tuple[list[_Entry], int]:
    """Delete the files of ``entries``; returns those actually removed (or already gone)
    and their bytes."""
    removed = []
    for entry in entries:
        try:
            os.remove(entry.path)
        except FileNotFoundError:
            pass
        except OSError:
            continue
        removed.append(entry)
    return removed, sum(e.size for e in removed)


def _least_recently_used(entries: list[_Entry], total: int, target: float) -> list[_Entry]:
    """The oldest-used entries whose removal brings ``total`` bytes down to ``target``."""
    chosen = []
    for entry in sorted(entries, key=lambda e: e.used):
        if total <= target:
            break
        chosen.append(entry)
        total -= entry.size
    return chosen


class FeatureCache:
    """Features of images, stored under ``directory`` (see the module docstring).

    Thread-safe: extraction threads may ``put`` concurrently.

    Args:
        directory: cache folder, created when needed; it may hold several extractors.
        extractor_key: identifies the extractor settings (``SiftOptions.key``).
        max_bytes: bound on the whole directory's size; None: unbounded.
    """

    def __init__(self, directory: str, extractor_key: str, max_bytes: int | None = None):
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.directory = os.fspath(directory)
        self.extractor_key = extractor_key
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._total: int | None = None  # directory size at the last scan plus our writes since
        self._written_since_scan = 0

    def path_for(self, image_path: str) -> str:
        """The cache file of ``image_path``'s current content (raises OSError if unreadable)."""
        digest = hashlib.blake2b(digest_size=20)
        digest.update(f"cbir-feature-cache-{FORMAT}\0{self.extractor_key}\0".encode("utf-8", "surrogateescape"))
        with open(image_path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
        name = digest.hexdigest()
        return os.path.join(self.directory, _key_folder(self.extractor_key), name[:2], name + ".npz")

    def get_arrays(self, image_path: str) -> dict[str, np.ndarray] | None:
        """Cached arrays of ``image_path``, or None when absent or unreadable; a hit
        marks the entry as used."""
        try:
            file = self.path_for(image_path)
            with np.load(file, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except _UNREADABLE:
            return None
        try:
            os.utime(file)
        except OSError:  # read-only cache, or evicted meanwhile: the arrays are still good
            pass
        return arrays

    def put_arrays(self, image_path: str, arrays: dict[str, np.ndarray]) -> None:
        """Store named arrays for ``image_path`` (atomic: a crash leaves no partial file),
        then evict least recently used entries if the cache is over its limit."""
        file = self.path_for(image_path)
        os.makedirs(os.path.dirname(file), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(file), suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                write_npz(handle, arrays)
            size = os.path.getsize(tmp)
            try:
                replaced = os.path.getsize(file)
            except OSError:
                replaced = 0
            os.replace(tmp, file)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        if self.max_bytes is not None:
            self._account(size - replaced, size)

    def _account(self, growth: int, written: int) -> None:
        """Add a put to the running size; rescan and evict when it may be over the limit.

        The running size misses what other processes write, so the directory is also
        rescanned after every tenth of ``max_bytes`` written here.
        """
        with self._lock:
            self._written_since_scan += written
            if self._total is not None:
                self._total += growth
                if self._total <= self.max_bytes and self._written_since_scan <= self.max_bytes / 10:
                    return
            entries, _ = _scan(self.directory)
            total = sum(e.size for e in entries)
            if total > self.max_bytes:
                _, freed = _remove(_least_recently_used(entries, total, EVICT_TO * self.max_bytes))
                total -= freed
            self._total, self._written_since_scan = total, 0

    def get(self, image_path: str) -> LocalFeatures | None:
        """Cached local features of ``image_path`` (float32, as they were put), or None
        when absent or unreadable."""
        data = self.get_arrays(image_path)
        if data is None:
            return None
        try:
            return LocalFeatures(data["keypoints"], _decode_descriptors(data), tuple(data["image_size"]))
        except _UNREADABLE:
            return None

    def put(self, image_path: str, features: LocalFeatures) -> None:
        """Store the local features of ``image_path`` (RootSIFT losslessly, others as float16)."""
        self.put_arrays(image_path, encode_features(features))


def encode_features(features: LocalFeatures) -> dict[str, np.ndarray]:
    """The arrays ``FeatureCache.put`` stores for ``features`` (see the module docstring)."""
    return {"keypoints": features.keypoints, "image_size": np.asarray(features.image_size, np.int64),
            **_encode_descriptors(features.descriptors)}


def cache_info(directory: str) -> dict:
    """What a feature cache directory holds, all extractors together.

    Returns:
        ``{"directory", "entries", "bytes", "keys": {extractor key folder: {"entries",
        "bytes"}}, "oldest_use", "newest_use", "temporary_files"}``; use times are
        Unix seconds (None when empty), files of the previous format are counted
        under ``OLD_FORMAT_KEY`` and temporary files (writes in progress or left by
        killed writers) are not entries.
    """
    entries, temporary = _scan(os.fspath(directory))
    keys: dict[str, dict] = {}
    for entry in entries:
        key = keys.setdefault(entry.key, {"entries": 0, "bytes": 0})
        key["entries"] += 1
        key["bytes"] += entry.size
    used = [e.used for e in entries]
    return {"directory": os.fspath(directory), "entries": len(entries), "bytes": sum(e.size for e in entries),
            "keys": dict(sorted(keys.items())), "oldest_use": min(used, default=None),
            "newest_use": max(used, default=None), "temporary_files": len(temporary)}


def clean_cache(directory: str, older_than_s: float | None = None, max_bytes: int | None = None) -> dict:
    """Remove entries of a feature cache directory, all extractors together.

    Entries unused for more than ``older_than_s`` seconds go first; then, if the
    cache is still over ``max_bytes``, the least recently used ones until it is at
    most ``max_bytes``. Temporary files older than ``STALE_TMP_S`` (left by killed
    writers) are always removed.

    Returns:
        ``{"removed", "removed_bytes", "removed_keys": {key folder: entries removed},
        "temporary_files_removed", "entries", "bytes"}`` (the last two: what remains).
    """
    now = time.time()
    entries, temporary = _scan(os.fspath(directory))
    doomed = [e for e in entries if older_than_s is not None and e.used < now - older_than_s]
    if max_bytes is not None:
        gone = {e.path for e in doomed}
        kept = [e for e in entries if e.path not in gone]
        doomed += _least_recently_used(kept, sum(e.size for e in kept), max_bytes)
    removed, removed_bytes = _remove(doomed)
    stale, _ = _remove([t for t in temporary if t.used < now - STALE_TMP_S])
    removed_keys: dict[str, int] = {}
    for entry in removed:
        removed_keys[entry.key] = removed_keys.get(entry.key, 0) + 1
    return {"removed": len(removed), "removed_bytes": removed_bytes, "removed_keys": dict(sorted(removed_keys.items())),
            "temporary_files_removed": len(stale), "entries": len(entries) - len(removed),
            "bytes": sum(e.size for e in entries) - removed_bytes}
