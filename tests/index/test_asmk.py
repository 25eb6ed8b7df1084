"""ASMK*: aggregation and binarisation against brute force, the kernel against its definition, and
an ASMK* index on real UKBench images (vocabulary and binarisation learned on Holidays images)."""
import dataclasses
import os

import numpy as np
import pytest

from bovw.hamming import HammingEmbedding
from index.asmk import AsmkConfig, AsmkEmbedding, aggregate, asmk_scores
from index.inverted_file import InvertedFile
from index.match_kernel import SIGNATURE

N_WORDS, DIM = 7, 64


def brute_force_signatures(embedding: HammingEmbedding, descriptors, words, centroids):
    """word -> uint64 signature from the definition, one word at a time, bits packed by hand."""
    words = np.asarray(words).reshape(len(descriptors), -1)
    out = {}
    for w in np.unique(words):
        rows, _ = np.nonzero(words == w)
        total = sum((descriptors[i].astype(np.float64) - centroids[w] for i in rows), np.zeros(DIM))
        unit = total / np.linalg.norm(total)
        projected = embedding.projection.astype(np.float64) @ unit
        out[int(w)] = np.uint64(sum(1 << b for b in range(64) if projected[b] > embedding.medians[w, b]))
    return out


@pytest.fixture
def learned(rng):
    centroids = rng.standard_normal((N_WORDS, DIM)).astype(np.float32)
    words = rng.integers(0, N_WORDS, 400)
    training = (centroids[words] + 0.3 * rng.standard_normal((400, DIM))).astype(np.float32)
    return centroids, AsmkEmbedding.learn(training, words, centroids, seed=3)


@pytest.mark.parametrize("k", [1, 2])
def test_aggregated_signatures_equal_brute_force(rng, learned, k):
    centroids, asmk = learned
    words = rng.integers(0, N_WORDS, (30, k))
    descriptors = (centroids[words[:, 0]] + 0.3 * rng.standard_normal((30, DIM))).astype(np.float32)
    got_words, got = asmk.signatures(descriptors, words, centroids)
    expected = brute_force_signatures(asmk.embedding, descriptors, words, centroids)
    assert got_words.tolist() == sorted(expected)
    # float32 against float64 may flip a bit lying on its median; none does here
    assert [int(s) for s in got] == [int(expected[w]) for w in got_words.tolist()]
    residuals = aggregate(descriptors, words, centroids)[1]
    assert np.allclose(np.linalg.norm(residuals, axis=1), 1, atol=1e-5)


def test_medians_split_training_residuals_in_half(learned, rng):
    centroids, asmk = learned
    words = rng.integers(0, N_WORDS, 2000)
    descriptors = (centroids[words] + 0.3 * rng.standard_normal((2000, DIM))).astype(np.float32)
    signatures = np.concatenate([asmk.signatures(d[None], w[None], centroids)[1] for d, w in zip(descriptors, words)])
    bits = np.unpackbits(signatures.view(np.uint8)).reshape(-1, 64)
    assert 0.4 < bits.mean() < 0.6


def test_distance_weights_are_the_selectivity_function():
    weights = AsmkConfig().distance_weights()
    assert len(weights) == 33 and weights[0] == 1 and weights[32] == 0
    assert np.isclose(weights[16], 0.5 ** 3)
    assert len(AsmkConfig(threshold=0.5).distance_weights()) == 17
    assert np.isclose(AsmkConfig(alpha=1, threshold=-1).distance_weights()[64], -1)
    for bad in ({"alpha": 0}, {"threshold": 1.5}, {"verification_threshold": 65}):
        with pytest.raises(ValueError):
            AsmkConfig(**bad)


def test_scores_equal_the_kernel_definition(rng):
    """Images as random aggregated signatures; the score of the definition, pair of words by pair."""
    images = [rng.choice(N_WORDS, rng.integers(2, 6), replace=False) for _ in range(8)]
    signatures = [rng.integers(0, 2 ** 63, len(w), dtype=np.uint64) for w in images]
    inverted = InvertedFile(N_WORDS, {SIGNATURE: np.uint64})
    inverted.add([np.sort(w) for w in images], {SIGNATURE: [s[np.argsort(w)] for w, s in zip(images, signatures)]})
    query_words = np.arange(N_WORDS)
    query_signatures = signatures[0][np.argsort(images[0])][np.searchsorted(np.sort(images[0]), query_words) %
                                                            len(images[0])] ^ np.uint64(0b111)
    config = AsmkConfig(alpha=3.0, threshold=-0.2)
    df = np.array([sum(w in set(image) for image in images) for w in range(N_WORDS)])
    idf = np.where(df > 0, np.log(len(images) / np.maximum(df, 1)), 0.0)
    expected = np.zeros(len(images))
    for i, (image, image_signatures) in enumerate(zip(images, signatures)):
        for w, s in zip(image, image_signatures):
            u = 1 - 2 * bin(int(s ^ query_signatures[w])).count("1") / 64
            if u >= config.threshold:
                expected[i] += idf[w] ** 2 * np.sign(u) * abs(u) ** config.alpha
        expected[i] /= np.sqrt((idf[image] ** 2).sum() * (idf ** 2).sum())
    got = asmk_scores(inverted, query_words, query_signatures, config)
    assert expected[0] > 0.5 and np.count_nonzero(expected) >= 6 and (expected < 0).any()  # tau < 0 lets u < 0 in
    assert np.allclose(got, expected, rtol=1e-5, atol=1e-9)


def test_each_feature_reads_its_words_aggregated_signature(rng):
    """Verification reads a candidate's per-feature signatures from the postings: with one posting
    per (image, word), every feature of a word gets that posting's signature."""
    from index.match_kernel import feature_signatures
    features = [rng.integers(0, N_WORDS, 12) for _ in range(3)]  # repeated words within each image
    inverted = InvertedFile(N_WORDS, {SIGNATURE: np.uint64})
    aggregated = [np.unique(f) for f in features]
    signatures = [rng.integers(0, 2 ** 63, len(w), dtype=np.uint64) for w in aggregated]
    inverted.add(aggregated, {SIGNATURE: signatures})
    for slot in range(3):
        expected = signatures[slot][np.searchsorted(aggregated[slot], features[slot])]
        assert np.array_equal(feature_signatures(inverted, slot, features[slot]), expected)


def test_save_keeps_the_binarisation(learned):
    _, asmk = learned
    meta, arrays = asmk.state_dict()
    for saved in (meta, {**meta, "config": {"alpha": 2.0, "threshold": 0.25}}):  # older saves held the selectivity
        loaded = AsmkEmbedding.from_state_dict(saved, arrays)
        assert np.array_equal(loaded.embedding.medians, asmk.embedding.medians)
        assert np.array_equal(loaded.embedding.projection, asmk.embedding.projection)
    with pytest.raises(ValueError):
        AsmkEmbedding.from_state_dict({**meta, "kind": "hamming-embedding"}, arrays)


# ---- real images -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def asmk_index(ukbench_subset, data_dir, feature_cache_dir):
    """The first 40 UKBench images (10 objects) in a sift-asmk index of 400 words built by
    ``build_index``, the vocabulary and the binarisation learned on 40 Holidays images."""
    from bovw.vocabulary import VocabularyConfig
    from cbir.build import build_index
    from cbir.evaluate import index_dataset
    holidays = sorted(os.path.join(data_dir, "holidays", f) for f in os.listdir(os.path.join(data_dir, "holidays")))
    index = build_index("sift-asmk", train_paths=holidays[:40],
                        vocabulary_config=VocabularyConfig(branching=20, depth=2, seed=0),
                        cache_dir=feature_cache_dir, n_jobs=2, progress=False)
    subset = dataclasses.replace(ukbench_subset, database=ukbench_subset.database[:40],
                                 queries=ukbench_subset.queries[:40], _positives=[
                                     g & set(ukbench_subset.database[:40]) for g in ukbench_subset._positives[:40]])
    index_dataset(index, subset, n_jobs=2, progress=False)
    return index, subset


def test_an_image_scores_one_with_itself_and_near_zero_with_an_unrelated_one(asmk_index):
    index, subset = asmk_index
    single = dataclasses.replace(index.pipeline.search, query_assignments=1)
    results = index.search(subset.database_paths[5], options=single)
    assert results[0].name == subset.database[5] and results[0].score == pytest.approx(1, abs=1e-5)
    # another object (images 4k..4k+3 show object k): its best view is far below
    unrelated = [r.score for r in results if r.slot // 4 != 1]
    assert max(unrelated) < 0.1 and np.median(unrelated) < 0.03


def test_asmk_index_ranks_the_right_ukbench_images_first(asmk_index, tmp_path):
    from cbir.evaluate import run_queries
    from cbir.searchable import load_index
    index, subset = asmk_index
    result = run_queries(index, subset, progress=False)
    (_, score), = result.scores.items()
    assert score >= 3.0  # of 4: 3 of each object's 4 views among its query's top 4 on average
    info = index.info()
    assert info["asmk"] and info["postings"] < info["features"] * 0.8  # one posting per (image, word)
    assert info["pipelines_served"] == ["sift-asmk", "sift-asmk-sv"]
    index.save(str(tmp_path / "asmk"))
    loaded = load_index(str(tmp_path / "asmk"))
    query = subset.database_paths[9]
    assert [(r.name, r.score) for r in loaded.search(query, top_k=5)] == \
        [(r.name, r.score) for r in index.search(query, top_k=5)]


def test_verification_matches_the_stored_features(asmk_index):
    """Postings hold aggregates only; verification matches the features the image store keeps
    (keypoint and word each) through shared words, as tf-idf indexes do."""
    from index.spatial_verification import VerificationConfig
    index, subset = asmk_index
    options = dataclasses.replace(index.pipeline.search, verification=VerificationConfig(top_k=10))
    results = index.search(subset.database_paths[5], top_k=4, options=options)
    assert [r.slot // 4 for r in results] == [1] * 4 and min(r.inliers for r in results) >= 50
    query = index.prepare_query(subset.database_paths[5], options=options)
    _, words = index.images.features(results[1].slot)
    assert all(words[d] in query.words[q] for q, d in results[1].matches)


def test_the_selectivity_is_a_search_option(asmk_index):
    """``SearchOptions.asmk`` sets the kernel at query time: another tau changes the scores as the
    kernel does, on the same postings."""
    index, subset = asmk_index
    query = subset.database_paths[5]
    single = dataclasses.replace(index.pipeline.search, query_assignments=1)  # a self-score of exactly 1
    default = {r.slot: r.score for r in index.search(query, options=single)}
    strict = dataclasses.replace(single, asmk=AsmkConfig(threshold=0.5))
    selective = {r.slot: r.score for r in index.search(query, options=strict)}
    assert selective[5] == pytest.approx(1, abs=1e-5) and len(selective) <= len(default)
    assert all(selective.get(slot, 0) <= score + 1e-6 for slot, score in default.items())
    assert sum(selective.values()) < sum(default.values())
    with pytest.raises(ValueError, match="ASMK\\* settings are needed exactly"):
        index.search(query, options=dataclasses.replace(strict, asmk=None))
    with pytest.raises(ValueError, match="built differently"):
        index.search(query, options="sift-he")


def test_an_asmk_binarisation_is_taken_exactly_by_asmk_pipelines(asmk_index):
    from cbir.retrieval_index import RetrievalIndex
    index, _ = asmk_index
    with pytest.raises(ValueError, match="needs a learned ASMK"):
        RetrievalIndex("sift-asmk", index.vocabulary)
    with pytest.raises(ValueError, match="is no ASMK"):
        RetrievalIndex("sift-bow", index.vocabulary, asmk=index.asmk)
