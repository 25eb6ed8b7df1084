import os
import shutil

import numpy as np

from bovw.extraction import ExtractionReport, iter_features
from bovw.feature_cache import FeatureCache
from bovw.features import extract_sift


def test_cache_round_trip_and_invalidation(data_dir, tmp_path):
    image = tmp_path / "box.png"
    shutil.copy(os.path.join(data_dir, "homography", "box.png"), image)
    cache = FeatureCache(str(tmp_path / "cache"), "sift-test")
    assert cache.get(str(image)) is None
    features = extract_sift(str(image))
    cache.put(str(image), features)
    again = cache.get(str(image))
    assert np.array_equal(again.descriptors, features.descriptors)
    assert np.array_equal(again.keypoints, features.keypoints) and again.image_size == features.image_size
    assert FeatureCache(str(tmp_path / "cache"), "other-settings").get(str(image)) is None
    os.utime(image, ns=(1, 1))  # the file changed: its cached features no longer apply
    assert cache.get(str(image)) is None


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
    list(iter_features(paths, extract_sift, cache, second, verbose=False))
    assert second.cached == 3 and second.extracted == 0
