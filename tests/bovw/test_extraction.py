import os
import shutil

import numpy as np
import pytest

from bovw.extraction import ExtractionReport, iter_features
from bovw.feature_cache import FeatureCache
from bovw.features import extract_sift


@pytest.fixture
def images(data_dir, tmp_path):
    """Six real UKBench images, copied so the cache keys are private to the test."""
    paths = []
    for i in range(6):
        path = tmp_path / f"img{i}.jpg"
        shutil.copy(os.path.join(data_dir, "ukbench", f"ukbench{i:05d}.jpg"), path)
        paths.append(str(path))
    return paths


class CountingExtractor:
    """extract_sift that records which files it was asked to extract."""

    def __init__(self):
        self.calls = []

    def __call__(self, path):
        self.calls.append(path)
        return extract_sift(path)


def test_partly_cached_chunks_keep_input_order(images, tmp_path):
    """Cached and new images interleaved across chunks come out in input order,
    each with its own features, and only the uncached ones are extracted."""
    cache = FeatureCache(str(tmp_path / "cache"), "sift")
    list(iter_features([images[1], images[4]], extract_sift, cache, verbose=False))
    extract, report = CountingExtractor(), ExtractionReport()
    got = list(iter_features(images, extract, cache, report, n_jobs=2, chunk_size=4, verbose=False))
    assert [p for p, _ in got] == images
    assert sorted(extract.calls) == sorted(images[i] for i in (0, 2, 3, 5))
    assert report.extracted == 4 and report.cached == 2 and report.skipped == []
    for path, features in got:
        assert np.array_equal(features.descriptors, extract_sift(path).descriptors)


def test_unreadable_files_are_skipped_with_a_reason_and_not_cached(images, tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"  # a text file renamed .jpg
    text.write_text("shopping list: milk, eggs\n")
    paths = [str(empty), images[0], str(text)]
    cache = FeatureCache(str(tmp_path / "cache"), "sift")
    first = ExtractionReport()
    got = list(iter_features(paths, extract_sift, cache, first, verbose=False))
    assert [p for p, _ in got] == [images[0]]
    assert first.extracted == 1 and first.cached == 0
    assert [p for p, _ in first.skipped] == [str(empty), str(text)]
    assert "empty file" in first.skipped[0][1] and "not an image file" in first.skipped[1][1]
    second = ExtractionReport()
    list(iter_features(paths, extract_sift, cache, second, verbose=False))
    assert (second.extracted, second.cached, len(second.skipped)) == (0, 1, 2)
    assert second.summary().splitlines()[0] == "0 extracted, 1 from cache, 2 skipped"


def test_threads_give_the_serial_features(images):
    serial = list(iter_features(images, extract_sift, n_jobs=1, verbose=False))
    threaded = list(iter_features(images, extract_sift, n_jobs=2, chunk_size=4, verbose=False))
    assert [p for p, _ in threaded] == [p for p, _ in serial] == images
    for (_, a), (_, b) in zip(serial, threaded):
        assert len(a) > 50
        assert np.array_equal(a.keypoints, b.keypoints) and np.array_equal(a.descriptors, b.descriptors)
