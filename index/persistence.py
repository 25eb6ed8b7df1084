"""Saving and loading named numpy arrays plus JSON metadata, safely.

A saved object is a directory holding ``manifest.json`` and one ``.npy`` file per
array. The manifest records the format name and version, each array's file,
dtype, shape and CRC-32, free-form JSON metadata, and a CRC-32 of itself.

Writes are atomic: array files of a new save get a fresh generation prefix and
are fsynced before ``manifest.json`` is replaced in one ``os.replace``; only then
are the previous generation's files removed. A crash at any point leaves either
the old or the new save complete. Loading never unpickles (``allow_pickle=False``),
refuses file names that leave the directory, and checks dtype, shape and checksum,
raising :class:`IndexFormatError` naming the file and the problem.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
import typing
import uuid
import zlib

import numpy as np

MANIFEST = "manifest.json"
_MAX_MANIFEST_BYTES = 64 << 20
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]+\.npy$")
_ALLOWED_DTYPES = {"bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64",
                   "int64", "float16", "float32", "float64"}


class IndexFormatError(Exception):
    """A saved index or vocabulary is missing, corrupt, or of another format/version."""


def _crc32(path: str) -> int:
    crc = 0
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            crc = zlib.crc32(block, crc)
    return crc


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(directory: str, manifest: dict) -> None:
    """Atomically write ``manifest`` (with its checksum added) as the directory's manifest file:
    a temporary file in the same folder, fsync, rename; the temporary file is removed on failure."""
    manifest = {**manifest, "checksum": manifest_checksum(manifest)}
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".manifest-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(manifest, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, os.path.join(directory, MANIFEST))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_arrays(directory: str, fmt: str, version: int, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """Atomically write ``arrays`` and ``meta`` as a ``fmt``/``version`` save in ``directory``.

    Args:
        directory: created if absent; an existing save there is replaced.
        fmt: format name checked on load (e.g. ``"cbir-index"``).
        version: format version checked on load.
        meta: JSON-serialisable metadata.
        arrays: name -> numpy array (numeric or bool dtypes only).
    """
    os.makedirs(directory, exist_ok=True)
    generation = uuid.uuid4().hex[:12]
    entries = {}
    written = []
    try:
        for name, array in arrays.items():
            array = np.ascontiguousarray(array)
            if array.dtype.name not in _ALLOWED_DTYPES:
                raise TypeError(f"array {name!r} has unsupported dtype {array.dtype}")
            file = f"{generation}-{name}.npy"
            if not _SAFE_NAME.match(file):
                raise ValueError(f"array name {name!r} is not a safe file name")
            path = os.path.join(directory, file)
            with open(path, "wb") as handle:
                written.append(path)
                np.save(handle, array, allow_pickle=False)
                handle.flush()
                os.fsync(handle.fileno())
            entries[name] = {"file": file, "dtype": array.dtype.name, "shape": list(array.shape),
                             "crc32": _crc32(path)}
        write_manifest(directory, {"format": fmt, "version": version, "meta": meta, "arrays": entries})
        _fsync_dir(directory)
    except BaseException:
        for path in written:
            if os.path.exists(path):
                os.unlink(path)
        raise
    keep = {entry["file"] for entry in entries.values()}
    for file in os.listdir(directory):
        if file.endswith(".npy") and file not in keep:
            os.unlink(os.path.join(directory, file))


def manifest_checksum(manifest: dict) -> int:
    """CRC-32 of the manifest's canonical JSON, its own ``checksum`` field left out."""
    body = {key: value for key, value in manifest.items() if key != "checksum"}
    return zlib.crc32(json.dumps(body, sort_keys=True).encode("utf-8"))


def read_manifest(directory: str) -> dict:
    """Parse and sanity-check ``manifest.json`` of a save (no array is read)."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        raise IndexFormatError(f"{path}: missing (not a saved index or vocabulary directory)")
    if os.path.getsize(path) > _MAX_MANIFEST_BYTES:
        raise IndexFormatError(f"{path}: manifest larger than {_MAX_MANIFEST_BYTES} bytes")
    try:
        with open(path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexFormatError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("arrays"), dict) \
            or not isinstance(manifest.get("meta"), dict):
        raise IndexFormatError(f"{path}: malformed manifest")
    if manifest.get("checksum") != manifest_checksum(manifest):
        raise IndexFormatError(f"{path}: checksum mismatch, the manifest is corrupted or was edited")
    return manifest


def load_arrays(directory: str, fmt: str, version: int, verify: bool = True,
                mmap: bool = False) -> tuple[dict, dict[str, np.ndarray]]:
    """Load a save written by :func:`save_arrays`.

    Args:
        directory: the save's directory.
        fmt: expected format name.
        version: the version this code reads.
        verify: check each file's CRC-32 (reads every byte once).
        mmap: memory-map arrays read-only instead of reading them.

    Returns:
        (meta, arrays).

    Raises:
        IndexFormatError: missing, malformed, other format or version, unsafe
            file name, wrong dtype/shape, truncated or corrupted file.
    """
    manifest = read_manifest(directory)
    manifest_path = os.path.join(directory, MANIFEST)
    if manifest.get("format") != fmt:
        raise IndexFormatError(f"{manifest_path}: format {manifest.get('format')!r}, expected {fmt!r}")
    if manifest.get("version") != version:
        raise IndexFormatError(f"{manifest_path}: format version {manifest.get('version')!r} "
                               f"cannot be read by this engine (it reads version {version})")
    arrays = {}
    for name, entry in manifest["arrays"].items():
        arrays[name] = _load_entry(directory, name, entry, verify, mmap)
    return manifest["meta"], arrays


def _load_entry(directory: str, name: str, entry, verify: bool, mmap: bool) -> np.ndarray:
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
        raise IndexFormatError(f"{directory}: manifest entry for {name!r} is malformed")
    file = entry["file"]
    if not _SAFE_NAME.match(file) or file.startswith("."):
        raise IndexFormatError(f"{directory}: manifest names {file!r}, which is not a file "
                               f"inside the index directory")
    path = os.path.join(directory, file)
    if not os.path.isfile(path):
        raise IndexFormatError(f"{path}: missing (array {name!r})")
    if verify and _crc32(path) != entry.get("crc32"):
        raise IndexFormatError(f"{path}: checksum mismatch, the file is corrupted or truncated")
    try:
        array = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (ValueError, OSError, EOFError) as exc:
        raise IndexFormatError(f"{path}: unreadable array ({exc})") from exc
    if array.dtype.name != entry.get("dtype") or array.dtype.name not in _ALLOWED_DTYPES \
            or list(array.shape) != entry.get("shape"):
        raise IndexFormatError(f"{path}: holds {array.dtype}{list(array.shape)}, manifest says "
                               f"{entry.get('dtype')}{entry.get('shape')}")
    return array


def dataclass_from_dict(cls, data):
    """Rebuild a (nested) dataclass from ``dataclasses.asdict`` output (TypeError if malformed)."""
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__} expects a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        if name not in hints:
            raise TypeError(f"unknown field {name!r} of {cls.__name__}")
        kinds = [t for t in typing.get_args(hints[name]) or (hints[name],) if dataclasses.is_dataclass(t)]
        values[name] = dataclass_from_dict(kinds[0], value) if kinds and value is not None else value
    return cls(**values)
