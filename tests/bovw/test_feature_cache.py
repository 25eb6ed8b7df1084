import io
import os
import shutil
import time
import zipfile
import zlib

import numpy as np
import pytest

from bovw.extraction import ExtractionReport, iter_features
from bovw.feature_cache import (COMPRESSION_LEVEL, OLD_FORMAT_KEY, STALE_TMP_S, FeatureCache, cache_info,
                                clean_cache, encode_features)
from bovw.features import LocalFeatures, extract_sift


@pytest.fixture(scope="module")
def box_features(data_dir):
    return extract_sift(os.path.join(data_dir, "homography", "box.png"))


@pytest.fixture
def box(data_dir, tmp_path):
    image = tmp_path / "images" / "box.png"
    image.parent.mkdir()
    shutil.copy(os.path.join(data_dir, "homography", "box.png"), image)
    return image


def _bit_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def _files(tmp_path, count: int, size: int = 20_000) -> list[str]:
    """``count`` distinct (non-image) files: the cache only hashes their bytes."""
    folder = tmp_path / "files"
    folder.mkdir()
    paths = [folder / f"{i}.bin" for i in range(count)]
    for i, path in enumerate(paths):
        path.write_bytes(bytes([i]) * size)
    return [str(p) for p in paths]


def _incompressible(rng, size: int) -> dict:
    return {"payload": rng.integers(0, 256, size, dtype=np.uint8)}


def _set_use(cache: FeatureCache, path: str, seconds_ago: float) -> None:
    when = time.time() - seconds_ago
    os.utime(cache.path_for(path), (when, when))


def test_copied_renamed_and_touched_images_hit_the_cache(box, box_features, tmp_path):
    cache = FeatureCache(str(tmp_path / "cache"), "sift-test")
    assert cache.get(str(box)) is None
    cache.put(str(box), box_features)
    copy = tmp_path / "elsewhere" / "renamed.png"
    copy.parent.mkdir()
    shutil.copy(box, copy)
    os.utime(copy, ns=(1, 1))  # another modification time, same bytes
    shutil.move(str(box), str(tmp_path / "moved.png"))
    for path in [copy, tmp_path / "moved.png"]:
        found = cache.get(str(path))
        assert _bit_equal(found.descriptors, box_features.descriptors)
    assert FeatureCache(str(tmp_path / "cache"), "other-settings").get(str(copy)) is None
    assert cache_info(str(tmp_path / "cache"))["entries"] == 1


def test_a_modified_image_misses(box, box_features, tmp_path):
    cache = FeatureCache(str(tmp_path / "cache"), "sift-test")
    cache.put(str(box), box_features)
    with open(box, "ab") as handle:
        handle.write(b"\0")
    assert cache.get(str(box)) is None
    assert cache.get(str(tmp_path / "missing.png")) is None


def test_rootsift_round_trips_bit_for_bit_in_uint8(box, box_features, tmp_path):
    cache = FeatureCache(str(tmp_path / "cache"), "sift-test")
    descriptors = box_features.descriptors.copy()
    descriptors[3] = np.nextafter(descriptors[3], np.float32(1))  # no SIFT integers give this row
    features = LocalFeatures(box_features.keypoints, descriptors, box_features.image_size)
    cache.put(str(box), features)
    stored = cache.get_arrays(str(box))
    assert stored["descriptor_counts"].dtype == np.uint8 and list(stored["descriptor_rows"]) == [3]
    found = cache.get(str(box))
    assert _bit_equal(found.descriptors, descriptors) and _bit_equal(found.keypoints, box_features.keypoints)
    assert found.image_size == box_features.image_size
    size = os.path.getsize(cache.path_for(str(box)))
    assert size < 0.3 * len(features) * (128 + 4) * 4  # float32 keypoints and descriptors, uncompressed


def test_files_are_deflated_at_the_level_and_entries_numpy_wrote_still_read(box, box_features, tmp_path):
    """Each member of a file ``put`` writes is deflated at ``COMPRESSION_LEVEL``; an entry written
    as before (``np.savez_compressed``, numpy's level 6) still reads back bit for bit."""
    cache = FeatureCache(str(tmp_path / "cache"), "sift-test")
    cache.put(str(box), box_features)
    file = cache.path_for(str(box))
    arrays = encode_features(box_features)
    with zipfile.ZipFile(file) as archive:
        assert sorted(archive.namelist()) == sorted(name + ".npy" for name in arrays)
        for info in archive.infolist():
            member = io.BytesIO()
            np.lib.format.write_array(member, arrays[info.filename[:-4]], allow_pickle=False)
            deflate = zlib.compressobj(COMPRESSION_LEVEL, zlib.DEFLATED, -15)
            expected = deflate.compress(member.getvalue()) + deflate.flush()
            assert info.compress_type == zipfile.ZIP_DEFLATED and info.compress_size == len(expected)
    assert COMPRESSION_LEVEL != 6
    with open(file, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    found = cache.get(str(box))
    assert _bit_equal(found.descriptors, box_features.descriptors)
    assert _bit_equal(found.keypoints, box_features.keypoints) and found.image_size == box_features.image_size


def test_other_descriptors_round_trip_within_float16_and_keypoints_exactly(box, rng, tmp_path):
    cache = FeatureCache(str(tmp_path / "cache"), "convlocal-test")
    n = 3000
    keypoints = np.column_stack([rng.uniform(0, 4096, (n, 2)), rng.uniform(0.5, 200, n),
                                 rng.uniform(0, 2 * np.pi, n)]).astype(np.float32)
    activations = np.maximum(rng.normal(size=(n, 672)), 0).astype(np.float32)
    descriptors = activations / np.linalg.norm(activations, axis=1, keepdims=True)
    cache.put(str(box), LocalFeatures(keypoints, descriptors, (3072, 4096)))
    assert cache.get_arrays(str(box))["descriptors"].dtype == np.float16
    found = cache.get(str(box))
    assert found.descriptors.dtype == np.float32 and found.image_size == (3072, 4096)
    assert np.max(np.abs(found.descriptors - descriptors)) <= 2.0 ** -11 * np.max(descriptors)
    assert _bit_equal(found.keypoints, keypoints)  # so x, y are well within 0.05 px


def test_feature_map_arrays_round_trip_unchanged(box, rng, tmp_path):
    cache = FeatureCache(str(tmp_path / "cache"), "efficientnet-test")
    maps = {"local": rng.normal(size=(672, 8, 6)).astype(np.float16),
            "global": np.maximum(rng.normal(size=(1280, 4, 3)), 0).astype(np.float16),
            "image_size": np.array([96, 128], np.int64)}
    cache.put_arrays(str(box), maps)
    found = cache.get_arrays(str(box))
    assert found.keys() == maps.keys()
    assert all(found[k].dtype == maps[k].dtype and np.array_equal(found[k], maps[k]) for k in maps)


@pytest.mark.parametrize("damage", ["empty", "truncated-start", "truncated-half", "garbage", "flipped-byte",
                                    "other-arrays"])
def test_a_damaged_cache_file_reads_as_a_miss(box, box_features, tmp_path, damage):
    cache = FeatureCache(str(tmp_path / "cache"), "sift-test")
    cache.put(str(box), box_features)
    file = cache.path_for(str(box))
    content = open(file, "rb").read()
    if damage == "other-arrays":
        cache.put_arrays(str(box), {"keypoints": np.zeros((2, 4), np.float32)})
    else:
        middle = len(content) // 2
        damaged = {"empty": b"", "truncated-start": content[:30], "truncated-half": content[:middle],
                   "garbage": os.urandom(len(content)),
                   "flipped-byte": content[:middle] + bytes([content[middle] ^ 0xFF]) + content[middle + 1:]}[damage]
        with open(file, "wb") as handle:
            handle.write(damaged)
    assert cache.get(str(box)) is None
    if damage != "other-arrays":
        assert cache.get_arrays(str(box)) is None
    cache.put(str(box), box_features)  # the next put repairs it
    assert _bit_equal(cache.get(str(box)).descriptors, box_features.descriptors)


def test_lru_eviction_removes_the_least_recently_used_first_and_keeps_under_the_limit(rng, tmp_path):
    paths = _files(tmp_path, 7)
    directory = str(tmp_path / "cache")
    probe = FeatureCache(directory, "probe")
    probe.put_arrays(paths[6], _incompressible(rng, 10_000))
    entry = os.path.getsize(probe.path_for(paths[6]))
    os.remove(probe.path_for(paths[6]))
    limit = int(5.5 * entry)
    cache = FeatureCache(directory, "maps", max_bytes=limit)
    for age, path in zip([500, 400, 300, 200, 100], paths[:5]):
        cache.put_arrays(path, _incompressible(rng, 10_000))
        _set_use(cache, path, age)
    assert cache.get_arrays(paths[0]) is not None  # the oldest becomes the most recently used
    cache.put_arrays(paths[5], _incompressible(rng, 10_000))  # 6 entries > 5.5: down to 90% of the limit
    kept = [os.path.exists(cache.path_for(p)) for p in paths[:6]]
    assert kept == [True, False, False, True, True, True]
    info = cache_info(directory)
    assert info["bytes"] <= limit and info["entries"] == 4


def test_the_limit_holds_with_many_puts_and_other_writers(rng, tmp_path):
    paths = _files(tmp_path, 30)
    directory = str(tmp_path / "cache")
    limit = 100_000
    cache = FeatureCache(directory, "maps", max_bytes=limit)
    other = FeatureCache(directory, "other-maps")  # unbounded, writing into the same folder
    for i, path in enumerate(paths):
        (other if i % 3 == 0 else cache).put_arrays(path, _incompressible(rng, 8_000))
    assert cache_info(directory)["bytes"] <= limit + 3 * 8_500  # what the other wrote since the last scan
    for path in paths[1:3]:  # two puts here: at least one rescans the folder
        cache.put_arrays(path, _incompressible(rng, 8_000))
    assert cache_info(directory)["bytes"] <= limit


def test_cache_info_and_clean_cache_by_age_and_size(rng, tmp_path):
    paths = _files(tmp_path, 6)
    directory = tmp_path / "cache"
    sift, maps = FeatureCache(str(directory), "sift-v1"), FeatureCache(str(directory), "maps-v1")
    for i, path in enumerate(paths):
        (sift if i < 4 else maps).put_arrays(path, _incompressible(rng, 5_000))
        _set_use(sift if i < 4 else maps, path, 1000 * (6 - i))  # paths[0] used longest ago
    old = directory / "ab" / ("ab" + "0" * 38 + ".npz")  # a file of the previous format
    old.parent.mkdir()
    old.write_bytes(b"x" * 100)
    os.utime(old, (time.time() - 10_000, time.time() - 10_000))
    leftover = directory / "sift-v1" / "00" / "killed.tmp"
    leftover.parent.mkdir()
    leftover.write_bytes(b"partial")
    os.utime(leftover, (time.time() - 2 * STALE_TMP_S,) * 2)

    info = cache_info(str(directory))
    assert info["entries"] == 7 and info["temporary_files"] == 1
    assert {k: v["entries"] for k, v in info["keys"].items()} == {"sift-v1": 4, "maps-v1": 2, OLD_FORMAT_KEY: 1}
    assert info["oldest_use"] < info["newest_use"] < time.time()
    assert info["bytes"] == sum(os.path.getsize(p) for p in directory.rglob("*.npz"))

    by_age = clean_cache(str(directory), older_than_s=3500)  # paths[0..2] and the old-format file
    assert by_age["removed"] == 4 and by_age["removed_keys"] == {OLD_FORMAT_KEY: 1, "sift-v1": 3}
    assert by_age["temporary_files_removed"] == 1 and not leftover.exists()
    assert by_age["entries"] == 3 and by_age["bytes"] == cache_info(str(directory))["bytes"]
    assert sift.get_arrays(paths[3]) is not None and sift.get_arrays(paths[2]) is None

    entry = os.path.getsize(maps.path_for(paths[4]))
    by_size = clean_cache(str(directory), max_bytes=int(1.5 * entry))
    # paths[3] was just used by get_arrays, so paths[4] and paths[5] go
    assert by_size["removed"] == 2 and by_size["removed_keys"] == {"maps-v1": 2}
    assert cache_info(str(directory))["bytes"] <= 1.5 * entry and sift.get_arrays(paths[3]) is not None
    assert clean_cache(str(tmp_path / "absent"))["removed"] == 0


def test_iter_features_uses_cache_and_reports_bad_files(data_dir, tmp_path):
    good = [os.path.join(data_dir, "ukbench", f"ukbench0000{i}.jpg") for i in range(3)]
    bad = tmp_path / "broken.jpg"
    bad.write_text("not an image")
    paths = [good[0], str(bad), good[1], str(tmp_path / "missing.jpg"), good[2]]
    cache = FeatureCache(str(tmp_path / "cache"), "sift-default")
    first = ExtractionReport()
    got = list(iter_features(paths, extract_sift, cache, first, n_jobs=2, verbose=False))
    assert [p for p, _ in got] == good
    assert first.extracted == 3 and [p for p, _ in first.skipped] == [str(bad), str(tmp_path / "missing.jpg")]
    assert "broken.jpg" in first.summary() and "no such file" in first.summary()
    second = ExtractionReport()
    again = list(iter_features(paths, extract_sift, cache, second, verbose=False))
    assert second.cached == 3 and second.extracted == 0
    assert all(_bit_equal(a.descriptors, b.descriptors) and _bit_equal(a.keypoints, b.keypoints)
               for (_, a), (_, b) in zip(got, again))
