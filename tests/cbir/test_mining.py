"""Mining verified pairs from unlabelled real images: the known UKBench pairs, persistence, resume, bad input."""
import json
import os

import numpy as np
import pytest

from bovw.vocabulary import VocabularyConfig
from cbir import mining
from cbir.mining import MinedPairs, MiningError, components_of, homography_scale, mine_pairs, symmetric_pairs
from cbir.retrieval_index import RetrievalIndex
from index.persistence import IndexFormatError

#: A small vocabulary keeps the tests quick (the engine's default is 141^2 words).
SMALL = VocabularyConfig(branching=16, depth=2, seed=0)


def ukbench_paths(data_dir, numbers):
    return [os.path.join(data_dir, "ukbench", f"ukbench{n:05d}.jpg") for n in numbers]


@pytest.fixture(scope="module")
def train_paths(data_dir):
    return ukbench_paths(data_dir, range(100, 120))  # other objects than the mined ones


@pytest.fixture(scope="module")
def mined(data_dir, train_paths, feature_cache_dir, tmp_path_factory):
    """5 objects x 4 views, 4 views of 4 other objects, and a corrupt file, mined at the default T."""
    broken = tmp_path_factory.mktemp("bad") / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    images = ukbench_paths(data_dir, [*range(20), 400, 500, 600, 700]) + [str(broken)]
    return mine_pairs(images, cache_dir=feature_cache_dir, n_jobs=2, progress=False, train_paths=train_paths,
                      vocabulary_config=SMALL, min_pairs=5)


def test_known_same_object_pairs_are_found_and_no_cross_object_pair(mined):
    number = np.array([int(os.path.basename(p)[7:12]) for p in mined.images])
    assert len(mined.images) == 24
    i, j = mined.pairs.T
    assert np.all(i < j) and np.all(number[i] // 4 == number[j] // 4), "a pair of two different objects"
    found = {(number[a], number[b]) for a, b in mined.pairs}
    assert len(found) >= 15, f"only {len(found)} of the 30 same-object pairs"  # most views of an object overlap
    assert {n // 4 for pair in found for n in pair} == set(range(5))  # every object has a verified pair
    for a, b in mined.pairs:  # different objects are always allowed as negatives, partners never
        assert not mined.negative_allowed(a, b)
    for k in range(20, 24):  # the four single views verify with nothing
        assert np.sum(mined.components == mined.components[k]) == 1
        assert mined.negative_allowed(k, 0) and len(mined.partners(k)) == 0
    assert np.all(mined.inliers >= mining.DEFAULT_MIN_INLIERS) and np.all(mined.scale > 0.2)
    assert np.all(mined.scale < 5)  # views of one object from similar distances
    assert mined.settings["min_inliers"] == mining.DEFAULT_MIN_INLIERS and mined.settings["shortlist"] == 100
    json.dumps(mined.settings)


def test_a_corrupt_image_is_skipped_and_listed(mined):
    (path, reason), = mined.skipped.items()
    assert path.endswith("broken.jpg") and reason and path not in mined.images


def test_save_load_round_trip_and_refusals(mined, tmp_path):
    mined.save(str(tmp_path / "pairs"))
    copy = MinedPairs.load(str(tmp_path / "pairs"))
    assert copy.images == mined.images and copy.settings == mined.settings and copy.skipped == mined.skipped
    for field in ("pairs", "inliers", "scale", "components"):
        assert np.array_equal(getattr(copy, field), getattr(mined, field))
        assert getattr(copy, field).dtype == getattr(mined, field).dtype
    manifest = tmp_path / "pairs" / "manifest.json"
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**data, "version": 99}))
    with pytest.raises(IndexFormatError, match="manifest.json.*(checksum|version)"):
        MinedPairs.load(str(tmp_path / "pairs"))
    with pytest.raises(IndexFormatError, match="missing"):
        MinedPairs.load(str(tmp_path / "nothing"))
    mined.save(str(tmp_path / "again"))
    array = next(f for f in os.listdir(tmp_path / "again") if f.endswith("-pairs.npy"))
    with open(tmp_path / "again" / array, "r+b") as handle:
        handle.seek(-4, 2)
        handle.write(b"\x00\x01\x02\x03")
    with pytest.raises(IndexFormatError, match="pairs.npy: checksum mismatch"):
        MinedPairs.load(str(tmp_path / "again"))


def test_a_stricter_threshold_keeps_a_subset_and_recomputes_components(mined):
    strict = mined.at_threshold(mined.settings["min_inliers"] + 25)
    assert len(strict.pairs) < len(mined.pairs) and np.all(strict.inliers >= mined.settings["min_inliers"] + 25)
    assert strict.n_components > mined.n_components
    with pytest.raises(ValueError, match="mine again"):
        mined.at_threshold(1)


def test_an_interrupted_mining_resumes_where_it_stopped(data_dir, train_paths, feature_cache_dir, tmp_path,
                                                       monkeypatch):
    images = ukbench_paths(data_dir, range(12))
    kwargs = dict(cache_dir=feature_cache_dir, n_jobs=1, progress=False, train_paths=train_paths,
                  vocabulary_config=SMALL, min_pairs=1, resume=str(tmp_path / "state"))
    monkeypatch.setattr(mining, "CHECKPOINT_EVERY", 4)
    calls = []
    search = RetrievalIndex.search

    def interrupted(self, *args, **kw):
        calls.append(1)
        if len(calls) == 7:
            raise KeyboardInterrupt
        return search(self, *args, **kw)

    monkeypatch.setattr(RetrievalIndex, "search", interrupted)
    with pytest.raises(KeyboardInterrupt):
        mine_pairs(images, **kwargs)
    monkeypatch.setattr(RetrievalIndex, "search", lambda self, *a, **kw: calls.append(1) or search(self, *a, **kw))
    calls.clear()
    resumed = mine_pairs(images, **kwargs)
    assert len(calls) == 12 - 4  # the 4 queries before the checkpoint are not run again
    fresh = mine_pairs(images, **{**kwargs, "resume": None})
    assert np.array_equal(resumed.pairs, fresh.pairs) and np.array_equal(resumed.inliers, fresh.inliers)
    with pytest.raises(MiningError, match="other images or settings"):
        mine_pairs(images[:8], **kwargs)


def test_too_few_pairs_says_how_many_and_what_would_help(data_dir, train_paths, feature_cache_dir):
    images = ukbench_paths(data_dir, [0, 1, 100, 200, 300, 500])  # one object seen twice, four seen once
    with pytest.raises(MiningError, match=r"found [01] verified pairs .* at least 10.* same objects"):
        mine_pairs(images, cache_dir=feature_cache_dir, n_jobs=1, progress=False, train_paths=train_paths,
                   vocabulary_config=SMALL)
    with pytest.raises(MiningError, match="at least 2 usable images"):
        mine_pairs(images[:1], cache_dir=feature_cache_dir, n_jobs=1, progress=False, train_paths=train_paths,
                   vocabulary_config=SMALL)


def test_pairs_are_joined_keeping_the_stronger_direction():
    pairs, inliers, scale = symmetric_pairs([0, 2, 1, 3, 3], [2, 0, 1, 1, 4], [10, 30, 99, 12, 7],
                                            [2.0, 0.25, 1.0, 0.5, 1.0])
    assert pairs.tolist() == [[0, 2], [1, 3], [3, 4]]  # the self match (1, 1) is dropped
    assert inliers.tolist() == [30, 12, 7]
    assert np.allclose(scale, [4.0, 2.0, 1.0])  # 2 -> 0 at x0.25 is 0 -> 2 at x4
    assert components_of(6, pairs).tolist() == [0, 1, 0, 1, 1, 2]
    h = np.array([[2.0, 0.0, 5.0], [0.0, 2.0, 1.0], [0.0, 0.0, 1.0]]) * 3.0
    assert np.isclose(homography_scale(h), 2.0)
