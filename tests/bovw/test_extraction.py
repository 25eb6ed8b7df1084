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


# ---- worker processes -------------------------------------------------------------------------

def test_processes_keep_order_reports_and_cache(images, tmp_path):
    """backend='processes': input order, skipped files reported, cached images not extracted again
    and new ones stored by the workers, the same features as one thread."""
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    cache = FeatureCache(str(tmp_path / "cache"), "sift")
    list(iter_features([images[1], images[4]], extract_sift, cache, verbose=False))
    paths = [images[0], str(empty), *images[1:]]
    report = ExtractionReport()
    got = list(iter_features(paths, extract_sift, cache, report, n_jobs=2, chunk_size=3, verbose=False,
                             backend="processes"))
    assert [p for p, _ in got] == images
    assert report.extracted == 4 and report.cached == 2
    assert [p for p, _ in report.skipped] == [str(empty)] and "empty file" in report.skipped[0][1]
    serial = dict(iter_features(images, extract_sift, n_jobs=1, verbose=False))
    for path, features in got:
        assert np.array_equal(features.keypoints, serial[path].keypoints)
        assert np.array_equal(features.descriptors, serial[path].descriptors)
        cached = cache.get(path)  # stored by a worker process
        assert cached is not None and np.array_equal(cached.descriptors, features.descriptors)
    again = ExtractionReport()
    list(iter_features(paths, extract_sift, cache, again, n_jobs=2, verbose=False, backend="processes"))
    assert (again.extracted, again.cached, len(again.skipped)) == (0, 6, 1)


def test_processes_need_a_picklable_extractor(images):
    with pytest.raises(TypeError, match="picklable"):
        iter_features(images, lambda path: extract_sift(path), n_jobs=2, verbose=False, backend="processes")
    with pytest.raises(ValueError, match="backend"):
        iter_features(images, extract_sift, verbose=False, backend="fork")
    # one worker extracts in the calling thread: any extractor will do
    one = list(iter_features(images[:2], lambda path: extract_sift(path), verbose=False, backend="processes"))
    assert [p for p, _ in one] == images[:2]


def test_progress_bar_counts_every_image_with_processes(images, tmp_path, monkeypatch):
    import bovw.extraction as extraction
    bars = []

    class Bar:
        def __init__(self, total, **kwargs):
            self.total, self.count, self.closed = total, 0, False
            bars.append(self)

        def update(self, n=1):
            self.count += n

        def close(self):
            self.closed = True

    monkeypatch.setattr(extraction, "tqdm", Bar)
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    got = list(iter_features([*images[:3], str(text)], extract_sift, n_jobs=2, chunk_size=2,
                             backend="processes"))
    assert len(got) == 3
    assert [(b.total, b.count, b.closed) for b in bars] == [(4, 4, True)]
