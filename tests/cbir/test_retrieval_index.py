import os
import shutil
import warnings

import numpy as np
import pytest
from PIL import Image

from cbir.evaluate import run_queries
from cbir.retrieval_index import RetrievalIndex, load_vocabulary, save_vocabulary
from index.persistence import MANIFEST, IndexFormatError


def test_right_ukbench_images_rank_first(built_index, ukbench_subset):
    result = run_queries(built_index, ukbench_subset, verbose=False)
    assert result.scores["N-S"] >= 3.0  # 15 objects x 4 views, 1000 words
    top = built_index.search(ukbench_subset.queries[5].path, top_k=4)
    # itself first (not exactly 1: the query's descriptors get 3 words each, the database's one)
    assert top[0].name == ukbench_subset.queries[5].name and top[0].score > 0.5
    assert {r.name for r in top[:3]} <= {f"ukbench0000{i}.jpg" for i in range(4, 8)}


def test_save_load_gives_identical_rankings(built_index, ukbench_subset, tmp_path):
    built_index.save(str(tmp_path / "idx"))
    loaded = RetrievalIndex.load(str(tmp_path / "idx"), cache_dir=built_index.cache_dir)
    for query in ukbench_subset.queries[:10]:
        a = [(r.name, r.score) for r in built_index.search(query.path)]
        b = [(r.name, r.score) for r in loaded.search(query.path)]
        assert a == b
    mapped = RetrievalIndex.load(str(tmp_path / "idx"), mmap=True, verify=False)
    assert mapped.search(ukbench_subset.queries[0].path, top_k=3)[0].name == ukbench_subset.queries[0].name


def test_corrupted_index_is_refused(built_index, tmp_path):
    directory = str(tmp_path / "idx")
    built_index.save(directory)
    victim = sorted(f for f in os.listdir(directory) if "image_slots" in f)[0]
    with open(os.path.join(directory, victim), "r+b") as handle:
        handle.seek(200)
        handle.write(b"\xff\xff\xff\xff")
    with pytest.raises(IndexFormatError, match=victim):
        RetrievalIndex.load(directory)
    with pytest.raises(IndexFormatError, match="not a saved index"):
        RetrievalIndex.load(str(tmp_path))


def test_vocabulary_directory_is_not_an_index(small_vocabulary, tmp_path):
    save_vocabulary(small_vocabulary, str(tmp_path / "voc"))
    assert load_vocabulary(str(tmp_path / "voc")).n_words == small_vocabulary.n_words
    with pytest.raises(IndexFormatError, match="format 'cbir-vocabulary'"):
        RetrievalIndex.load(str(tmp_path / "voc"))


def test_bad_images_are_reported_and_skipped(small_vocabulary, ukbench_subset, tmp_path, feature_cache_dir):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ukbench_subset.database[:4]:
        shutil.copy(os.path.join(ukbench_subset.root, name), folder / name)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("hello")
    good = (folder / ukbench_subset.database[0]).read_bytes()
    (folder / "truncated.jpg").write_bytes(good[:1500])
    Image.new("RGB", (1, 1)).save(folder / "tiny.png")
    Image.new("RGB", (300, 200), (120, 120, 120)).save(folder / "flat.png")
    index = RetrievalIndex(small_vocabulary, "sift-bow", cache_dir=feature_cache_dir)
    paths = sorted(str(p) for p in folder.iterdir())
    report = index.add_images(paths, verbose=False)
    skipped = {os.path.basename(p): reason for p, reason in report.skipped}
    assert set(skipped) == {"empty.jpg", "text.jpg", "truncated.jpg", "tiny.png"}
    assert len(index) == 5  # the four photos and the flat image (indexed with no features)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert index.search(str(folder / "flat.png")) == []
    assert any("no local features" in str(w.message) for w in caught)
    assert index.search(str(folder / ukbench_subset.database[1]), top_k=1)[0].name.endswith(ukbench_subset.database[1])


def test_add_and_remove_by_name(small_vocabulary, ukbench_subset, feature_cache_dir):
    index = RetrievalIndex(small_vocabulary, "sift-bow", cache_dir=feature_cache_dir)
    paths = ukbench_subset.database_paths[:8]
    index.add_images(paths[:4], ukbench_subset.database[:4], verbose=False)
    index.add_images(paths[4:], ukbench_subset.database[4:8], verbose=False)
    index.remove([ukbench_subset.database[4]])
    assert len(index) == 7 and ukbench_subset.database[4] not in index.images
    fresh = RetrievalIndex(small_vocabulary, "sift-bow", cache_dir=feature_cache_dir)
    keep = [i for i in range(8) if i != 4]
    fresh.add_images([paths[i] for i in keep], [ukbench_subset.database[i] for i in keep], verbose=False)
    assert np.allclose(index.scores(index.extract(paths[5])), fresh.scores(fresh.extract(paths[5])))
    with pytest.raises(KeyError, match="no image named"):
        index.remove(["nope.jpg"])


def test_query_crop_keeps_the_object(built_index, ukbench_subset):
    query = ukbench_subset.queries[8]
    results = built_index.search(query.path, top_k=3, bbox=(40, 30, 280, 210))
    assert results[0].name in {f"ukbench0000{i}.jpg" for i in range(8, 12)}


def test_manifest_is_plain_json(built_index, tmp_path):
    built_index.save(str(tmp_path / "idx"))
    import json
    manifest = json.load(open(tmp_path / "idx" / MANIFEST))
    assert manifest["format"] == "cbir-index" and manifest["meta"]["pipeline"]["name"] == "sift-bow"


def test_spatial_reranking_lifts_true_matches_on_real_queries(built_index, ukbench_subset):
    from cbir.pipelines import get_pipeline
    reranked = RetrievalIndex(built_index.vocabulary, get_pipeline("sift-sv"))
    reranked.inverted_file, reranked.images = built_index.inverted_file, built_index.images
    lifted = 0
    for query, group in zip(ukbench_subset.queries, ukbench_subset._positives):
        features = built_index.extract(query.path)
        before = [r.name for r in built_index.search(features)]
        after = reranked.search(features)
        for result in after:
            if result.inliers is None:
                break
            assert result.inliers >= reranked.pipeline.verification.min_inliers
        # a true match that was below some non-match and is now above all non-matches of the top 4
        for name in group - {query.name}:
            first_wrong_before = next(i for i, n in enumerate(before) if n not in group)
            position_after = [r.name for r in after].index(name)
            first_wrong_after = next(i for i, r in enumerate(after) if r.name not in group)
            if before.index(name) > first_wrong_before and position_after < first_wrong_after:
                lifted += 1
    assert lifted >= 3
    bow = run_queries(built_index, ukbench_subset, verbose=False).scores["N-S"]
    assert run_queries(reranked, ukbench_subset, verbose=False).scores["N-S"] >= bow


def test_hamming_embedding_index(small_vocabulary, ukbench_subset, feature_cache_dir, tmp_path):
    from cbir.pipelines import get_pipeline
    from cbir.retrieval_index import learn_hamming
    pipeline = get_pipeline("sift-he")
    hamming, _ = learn_hamming(ukbench_subset.database_paths, pipeline, small_vocabulary, feature_cache_dir,
                               verbose=False)
    index = RetrievalIndex(small_vocabulary, pipeline, feature_cache_dir, hamming=hamming)
    from cbir.evaluate import index_dataset
    index_dataset(index, ukbench_subset, verbose=False)
    result = run_queries(index, ukbench_subset, verbose=False)
    assert result.scores["N-S"] >= 3.2
    query = ukbench_subset.queries[7].path
    top = index.search(query)
    assert top[0].name == ukbench_subset.queries[7].name and top[0].score == max(r.score for r in top)
    index.save(str(tmp_path / "he"))
    loaded = RetrievalIndex.load(str(tmp_path / "he"), cache_dir=feature_cache_dir)
    assert np.array_equal(loaded.hamming.medians, hamming.medians)
    assert np.array_equal(loaded.hamming.projection, hamming.projection)
    assert [(r.name, r.score) for r in loaded.search(query)] == [(r.name, r.score) for r in top]
