import json
import os

import numpy as np
import pytest

from index.persistence import MANIFEST, IndexFormatError, load_arrays, manifest_checksum, save_arrays


@pytest.fixture
def saved(tmp_path):
    arrays = {"a": np.arange(1000, dtype=np.int32), "b": np.ones((10, 4), np.float32)}
    save_arrays(str(tmp_path / "x"), "test-format", 1, {"hello": "world"}, arrays)
    return str(tmp_path / "x"), arrays


def _manifest(directory):
    with open(os.path.join(directory, MANIFEST)) as handle:
        return json.load(handle)


def test_round_trip(saved):
    directory, arrays = saved
    meta, loaded = load_arrays(directory, "test-format", 1)
    assert meta == {"hello": "world"}
    assert all(np.array_equal(loaded[k], arrays[k]) for k in arrays)
    _, mapped = load_arrays(directory, "test-format", 1, mmap=True)
    assert isinstance(mapped["a"], np.memmap)


def test_resave_replaces_old_generation(saved):
    directory, arrays = saved
    save_arrays(directory, "test-format", 1, {}, {"c": np.zeros(3)})
    assert sorted(f for f in os.listdir(directory) if f.endswith(".npy")) == [_manifest(directory)["arrays"]["c"]["file"]]


def test_version_and_format_mismatch(saved):
    directory, _ = saved
    with pytest.raises(IndexFormatError, match="version 1 cannot be read"):
        load_arrays(directory, "test-format", 2)
    with pytest.raises(IndexFormatError, match="format 'test-format'"):
        load_arrays(directory, "other", 1)


def test_corrupted_and_truncated_files_are_refused(saved):
    directory, _ = saved
    file = os.path.join(directory, _manifest(directory)["arrays"]["a"]["file"])
    data = bytearray(open(file, "rb").read())
    data[-5] ^= 0xFF
    open(file, "wb").write(bytes(data))
    with pytest.raises(IndexFormatError, match="checksum"):
        load_arrays(directory, "test-format", 1)
    open(file, "wb").write(bytes(data[:300]))
    with pytest.raises(IndexFormatError, match="unreadable|holds"):
        load_arrays(directory, "test-format", 1, verify=False)


def test_manifest_cannot_point_outside(saved, tmp_path):
    directory, _ = saved
    manifest = _manifest(directory)
    manifest["arrays"]["a"]["file"] = "../outside.npy"
    manifest["checksum"] = manifest_checksum(manifest)  # a crafted manifest, not a corrupted one
    np.save(tmp_path / "outside.npy", np.arange(3))
    with open(os.path.join(directory, MANIFEST), "w") as handle:
        json.dump(manifest, handle)
    with pytest.raises(IndexFormatError, match="not a file inside"):
        load_arrays(directory, "test-format", 1)


def test_object_arrays_are_never_loaded(saved):
    directory, _ = saved
    manifest = _manifest(directory)
    file = manifest["arrays"]["a"]["file"]
    np.save(os.path.join(directory, file), np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(IndexFormatError):
        load_arrays(directory, "test-format", 1, verify=False)


def test_missing_and_malformed_manifest(tmp_path):
    with pytest.raises(IndexFormatError, match="missing"):
        load_arrays(str(tmp_path), "test-format", 1)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(IndexFormatError, match="not valid JSON"):
        load_arrays(str(tmp_path), "test-format", 1)


def test_failed_save_leaves_the_previous_one_intact(saved, monkeypatch):
    directory, arrays = saved

    def failing_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(OSError):
        save_arrays(directory, "test-format", 1, {"new": True}, {"a": np.zeros(5)})
    monkeypatch.undo()
    meta, loaded = load_arrays(directory, "test-format", 1)
    assert meta == {"hello": "world"} and np.array_equal(loaded["a"], arrays["a"])
    assert len([f for f in os.listdir(directory) if f.endswith(".npy")]) == 2


def test_edited_manifest_is_refused(saved):
    directory, _ = saved
    path = os.path.join(directory, MANIFEST)
    text = open(path).read()
    open(path, "w").write(text.replace('"world"', '"w0rld"'))
    with pytest.raises(IndexFormatError, match="manifest is corrupted"):
        load_arrays(directory, "test-format", 1)
