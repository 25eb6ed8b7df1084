import dataclasses
import logging
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from cbir.build import learn_hamming
from cbir.evaluate import index_dataset, run_queries
from cbir.pipelines import get_pipeline
from cbir.retrieval_index import RetrievalIndex, load_vocabulary, save_vocabulary
from index.persistence import MANIFEST, IndexFormatError


def test_right_ukbench_images_rank_first(built_index, ukbench_subset):
    result = run_queries(built_index, ukbench_subset, progress=False)
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
    with pytest.raises(IndexFormatError, match="expected 'cbir-index'"):
        RetrievalIndex.load(os.path.join(os.path.dirname(__file__), "..", "data", "format-v1", "rmac-rr"))


def test_vocabulary_directory_is_not_an_index(small_vocabulary, tmp_path):
    save_vocabulary(small_vocabulary, str(tmp_path / "voc"))
    assert load_vocabulary(str(tmp_path / "voc")).n_words == small_vocabulary.n_words
    with pytest.raises(IndexFormatError, match="format 'cbir-vocabulary', expected 'cbir-index'"):
        RetrievalIndex.load(str(tmp_path / "voc"))


def test_bad_images_are_reported_and_skipped(small_vocabulary, ukbench_subset, tmp_path, feature_cache_dir, caplog):
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
    index = RetrievalIndex("sift-bow", small_vocabulary, cache_dir=feature_cache_dir)
    paths = sorted(str(p) for p in folder.iterdir())
    report = index.add_images(paths, progress=False)
    skipped = {os.path.basename(p): reason for p, reason in report.skipped}
    assert set(skipped) == {"empty.jpg", "text.jpg", "truncated.jpg", "tiny.png"}
    assert len(index) == 5  # the four photos and the flat image (indexed with no features)
    with caplog.at_level(logging.WARNING, logger="cbir"):
        assert index.search(str(folder / "flat.png")) == []
    assert "flat.png has no features" in caplog.text
    assert index.search(str(folder / ukbench_subset.database[1]), top_k=1)[0].name.endswith(ukbench_subset.database[1])


def test_add_and_remove_by_name(small_vocabulary, ukbench_subset, feature_cache_dir):
    index = RetrievalIndex("sift-bow", small_vocabulary, cache_dir=feature_cache_dir)
    paths = ukbench_subset.database_paths[:8]
    index.add_images(paths[:4], ukbench_subset.database[:4], progress=False)
    index.add_images(paths[4:], ukbench_subset.database[4:8], progress=False)
    index.remove([ukbench_subset.database[4]])
    assert len(index) == 7 and ukbench_subset.database[4] not in index
    fresh = RetrievalIndex("sift-bow", small_vocabulary, cache_dir=feature_cache_dir)
    keep = [i for i in range(8) if i != 4]
    fresh.add_images([paths[i] for i in keep], [ukbench_subset.database[i] for i in keep], progress=False)
    assert [(r.name, r.score) for r in index.search(paths[5])] == [(r.name, r.score) for r in fresh.search(paths[5])]
    with pytest.raises(KeyError, match="no image named"):
        index.remove(["nope.jpg"])


def test_batches_wait_until_a_search_joins_them(small_vocabulary, ukbench_subset, feature_cache_dir):
    """add_features only appends: the stores are joined once, by the next search, and the result
    equals one add of everything."""
    index = RetrievalIndex("sift-bow", small_vocabulary, cache_dir=feature_cache_dir)
    features = [index.query_features(p) for p in ukbench_subset.database_paths[:12]]
    for start in range(0, 12, 3):
        index.add_features(ukbench_subset.database[start:start + 3], features[start:start + 3])
    assert index.inverted_file.pending and index.images.pending and len(index) == 12
    whole = RetrievalIndex("sift-bow", small_vocabulary)
    whole.add_features(ukbench_subset.database[:12], features)
    batched = [(r.name, r.score) for r in index.search(features[3])]
    assert not index.inverted_file.pending and not index.images.pending
    assert batched == [(r.name, r.score) for r in whole.search(features[3])]


def test_a_query_does_not_write_the_feature_cache(small_vocabulary, ukbench_subset, tmp_path):
    cache = tmp_path / "cache"
    index = RetrievalIndex("sift-bow", small_vocabulary, cache_dir=str(cache))
    index.add_images(ukbench_subset.database_paths[:2], progress=False)
    written = sorted(p.name for p in cache.rglob("*.npz"))
    assert len(written) == 2
    index.search(ukbench_subset.database_paths[5])
    assert sorted(p.name for p in cache.rglob("*.npz")) == written


def test_search_options_change_per_call_without_another_index(built_index, ukbench_subset):
    query = ukbench_subset.queries[9].path
    default = built_index.search(query, top_k=5)
    verified = built_index.search(query, top_k=5, options="sift-sv")
    assert all(r.inliers is None for r in default) and verified[0].inliers is not None
    assert built_index.search(query, top_k=5) == default  # the index's own defaults are unchanged
    hard = dataclasses.replace(built_index.pipeline.search, query_assignments=1)
    assert [r.name for r in built_index.search(query, top_k=5, options=hard)][0] == ukbench_subset.queries[9].name
    with pytest.raises(ValueError, match="built differently"):
        built_index.search(query, options="sift-he")
    with pytest.raises(ValueError, match="window search needs every conv-map position of one grid"):
        built_index.search(query, options=dataclasses.replace(hard, window_search=10))
    with pytest.raises(ValueError, match="top_k must be at least 1"):
        built_index.search(query, top_k=0)


def test_a_pipeline_of_the_other_kind_is_refused_by_name(small_vocabulary):
    with pytest.raises(ValueError, match="'gem' builds a global index"):
        RetrievalIndex("gem", small_vocabulary)


def test_info_reports_bytes_per_image(built_index):
    facts = built_index.info()
    assert facts["images"] == len(built_index) and facts["pipeline"] == "sift-bow"
    assert facts["pipelines_served"] == ["sift-bow", "sift-sv", "sift-sv-qe"]
    assert facts["bytes"]["inverted_file.image_slots"] == 4 * facts["postings"]
    per_feature = {k: v * facts["images"] / facts["features"] for k, v in facts["bytes_per_image"].items()}
    assert per_feature["images.keypoint_xy"] == per_feature["images.keypoint_scale_angle"] == 4
    assert per_feature["images.words"] == 2  # 1000 words fit uint16


def test_a_box_turns_with_its_query_image(ukbench_subset):
    """rotate_query turns counter-clockwise (the top-right pixel comes to the top left at 90 degrees)
    and its box holds the turned crop of the box, for each quarter turn; other angles are refused."""
    from cbir.searchable import crop, decode_query, rotate_query
    image = decode_query(ukbench_subset.queries[3].path, color=True)
    box = (37, 20, 251, 171)
    for degrees in (90, 180, 270):
        turned, turned_box = rotate_query(image, box, degrees)
        assert np.array_equal(crop(turned, turned_box), np.rot90(crop(image, box), degrees // 90))
    assert np.array_equal(rotate_query(image, None, 90)[0][0, 0], image[0, -1])
    with pytest.raises(ValueError, match="quarter turns only"):
        rotate_query(image, box, 45)


def test_query_crop_keeps_the_object(built_index, ukbench_subset):
    query = ukbench_subset.queries[8]
    results = built_index.search(query.path, top_k=3, box=(40, 30, 280, 210))
    assert results[0].name in {f"ukbench0000{i}.jpg" for i in range(8, 12)}
    with pytest.raises(ValueError, match="keeps less than 2x2 pixels of the 320x240 query image"):
        built_index.search(query.path, box=(400, 300, 500, 400))
    with pytest.raises(ValueError, match="is empty"):
        built_index.search(query.path, box=(50, 50, 10, 80))


def test_manifest_is_plain_json(built_index, tmp_path):
    built_index.save(str(tmp_path / "idx"))
    import json
    manifest = json.load(open(tmp_path / "idx" / MANIFEST))
    assert manifest["format"] == "cbir-index" and manifest["meta"]["pipeline"]["name"] == "sift-bow"


@pytest.mark.slow
def test_spatial_reranking_lifts_true_matches_on_real_queries(built_index, ukbench_subset):
    lifted = 0
    for query, group in zip(ukbench_subset.queries, ukbench_subset._positives):
        features = built_index.query_features(query.path)
        before = [r.name for r in built_index.search(features)]
        after = built_index.search(features, options="sift-sv")
        for result in after:
            if result.inliers is None:
                break
            assert result.inliers >= get_pipeline("sift-sv").search.verification.min_inliers
        # a true match that was below some non-match and is now above all non-matches of the top 4
        for name in group - {query.name}:
            first_wrong_before = next(i for i, n in enumerate(before) if n not in group)
            position_after = [r.name for r in after].index(name)
            first_wrong_after = next(i for i, r in enumerate(after) if r.name not in group)
            if before.index(name) > first_wrong_before and position_after < first_wrong_after:
                lifted += 1
    assert lifted >= 3
    bow = run_queries(built_index, ukbench_subset, progress=False).scores["N-S"]
    assert run_queries(built_index, ukbench_subset, "sift-sv", progress=False).scores["N-S"] >= bow


def test_hamming_embedding_index(small_vocabulary, ukbench_subset, feature_cache_dir, tmp_path):
    hamming, _ = learn_hamming(ukbench_subset.database_paths, "sift-he", small_vocabulary, feature_cache_dir,
                               progress=False)
    index = RetrievalIndex("sift-he", small_vocabulary, hamming=hamming, cache_dir=feature_cache_dir)
    index_dataset(index, ukbench_subset, progress=False)
    result = run_queries(index, ukbench_subset, progress=False)
    assert result.scores["N-S"] >= 3.2
    query = ukbench_subset.queries[7].path
    top = index.search(query)
    assert top[0].name == ukbench_subset.queries[7].name and top[0].score == max(r.score for r in top)
    index.save(str(tmp_path / "he"))
    loaded = RetrievalIndex.load(str(tmp_path / "he"), cache_dir=feature_cache_dir)
    assert np.array_equal(loaded.hamming.medians, hamming.medians)
    assert np.array_equal(loaded.hamming.projection, hamming.projection)
    assert [(r.name, r.score) for r in loaded.search(query)] == [(r.name, r.score) for r in top]

    def scores(threshold):  # without burstiness, a vote can only be lost by lowering the threshold
        matching = dataclasses.replace(index.pipeline.search.hamming, threshold=threshold, burstiness=False)
        results = index.search(query, options=dataclasses.replace(index.pipeline.search, hamming=matching))
        return np.array([r.score for r in sorted(results, key=lambda r: r.slot)])
    loose, strict = scores(24), scores(8)
    assert np.all(strict <= loose + 1e-6) and strict.sum() < loose.sum()
