import os

import numpy as np
import pytest

pytest.importorskip("torch")

from bovw.images import ImageOptions, load_image  # noqa: E402
from cbir.evaluate import run_queries  # noqa: E402
from cbir.retrieval_index import RetrievalIndex  # noqa: E402
from cnn.local_features import conv_local_from_image  # noqa: E402


def test_words_of_a_shifted_crop_overlap_strongly(blcf_parts, data_dir):
    pipeline, whitening, vocabulary, _ = blcf_parts
    image = load_image(os.path.join(data_dir, "ukbench", "ukbench00008.jpg"), ImageOptions(), color=True)
    shift = 64  # four map cells
    full = conv_local_from_image(image)
    crop = conv_local_from_image(image[:, shift:])
    words_full = vocabulary.quantize(whitening.apply(full.descriptors)).reshape(15, 20)
    words_crop = vocabulary.quantize(whitening.apply(crop.descriptors)).reshape(15, -1)
    aligned_full = words_full[2:-2, 4 + 2:-2]  # inner cells, away from either border
    aligned_crop = words_crop[2:-2, 2:2 + aligned_full.shape[1]]
    assert np.mean(aligned_full == aligned_crop) > 0.5
    unrelated = load_image(os.path.join(data_dir, "ukbench", "ukbench00100.jpg"), ImageOptions(), color=True)
    words_other = vocabulary.quantize(whitening.apply(conv_local_from_image(unrelated).descriptors)).reshape(15, 20)
    assert np.mean(words_other[2:-2, 6:-2] == aligned_full) < 0.1


@pytest.mark.parametrize("name", ["blcf", "blcf-ls"])
def test_blcf_ranks_the_right_ukbench_images_first(blcf_index, ukbench_subset, name):
    """Global and local search run on one index: they differ only in their search options."""
    assert run_queries(blcf_index, ukbench_subset, name, progress=False).scores["N-S"] >= 3.0


def test_blcf_query_box_keeps_positions_inside(blcf_parts, ukbench_subset, tmp_path):
    pipeline, whitening, vocabulary, cache = blcf_parts
    index = RetrievalIndex(pipeline, vocabulary, whitening, cache_dir=cache)
    full = index.query_features(ukbench_subset.queries[0].path)
    boxed = index.query_features(ukbench_subset.queries[0].path, box=(0, 0, 160, 120))
    assert 0 < len(boxed) < len(full) / 2
    assert boxed.keypoints[:, 0].max() <= 160 and boxed.keypoints[:, 1].max() <= 120
    index.add_images(ukbench_subset.database_paths[:8], ukbench_subset.database[:8], progress=False)
    index.save(str(tmp_path / "idx"))
    loaded = RetrievalIndex.load(str(tmp_path / "idx"), cache_dir=cache)
    query = ukbench_subset.queries[1].path
    assert [r.name for r in loaded.search(query)] == [r.name for r in index.search(query)]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["blcf-he", "blcf-asmk"])
def test_signatures_on_conv_words_rank_better_than_plain_blcf(name, blcf_parts, blcf_index, ukbench_subset):
    """Hamming embedding and ASMK* on the conv words of blcf_parts' setting (64-d whitening, 400 words,
    both learned on UKBench objects 50-79 with their signatures): the same images rank better."""
    import dataclasses

    from bovw.vocabulary import VocabularyConfig
    from cbir.build import build_index
    from cbir.evaluate import index_dataset
    from cbir.pipelines import get_pipeline
    pipeline, _, _, cache = blcf_parts
    variant = get_pipeline(name)
    variant = dataclasses.replace(variant, build=dataclasses.replace(
        variant.build, local_whitening_dim=64, vocabulary=VocabularyConfig(branching=20, depth=2)))
    train = [os.path.join(ukbench_subset.root, f"ukbench{i:05d}.jpg") for i in range(200, 320)]
    index = build_index(variant, None, train, None, None, cache, 2, progress=False)
    index_dataset(index, ukbench_subset, n_jobs=2, progress=False)
    plain = run_queries(blcf_index, ukbench_subset, progress=False).scores["N-S"]
    assert run_queries(index, ukbench_subset, progress=False).scores["N-S"] >= plain + 0.05


def test_multi_scale_words_of_an_image_and_its_half_size_copy_overlap(blcf_parts, data_dir):
    """With scales (1, 0.5) the image's half-scale map is its half-size copy's full-scale map: the
    same positions (in each image's pixels) carry the same words, and the two bags share more words
    than single-scale bags do."""
    import collections

    import cv2

    from cnn.options import ConvLocalOptions
    _, whitening, vocabulary, _ = blcf_parts
    image = load_image(os.path.join(data_dir, "ukbench", "ukbench00008.jpg"), ImageOptions(), color=True)
    half = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA)
    shared = {}
    for scales in ((1.0,), (1.0, 0.5)):
        options = ConvLocalOptions(scales=scales)
        features = [conv_local_from_image(picture, options) for picture in (image, half)]
        words = [vocabulary.quantize(whitening.apply(f.descriptors)) for f in features]
        common = collections.Counter(words[0].tolist()) & collections.Counter(words[1].tolist())
        shared[scales] = sum(common.values()) / len(words[1])
    coarse = features[0].keypoints[:, 2] == 32  # the image's half-scale positions: stride 32 of its pixels
    copy = features[1].keypoints[:, 2] == 16    # the copy's full-scale positions
    assert np.allclose(features[0].keypoints[coarse, :2], features[1].keypoints[copy, :2] * 2, atol=1)
    assert np.mean(words[0][coarse] == words[1][copy]) > 0.9
    assert shared[(1.0, 0.5)] > shared[(1.0,)] + 0.05


def test_queries_shot_sideways_are_found_by_searching_their_rotations(blcf_index, ukbench_subset, tmp_path):
    """Every UKBench query turned a quarter clockwise: the conv words of an upright network lose
    the object's other views; searched at 0, 90 and 270 degrees, they come back (the 90-degree
    view is the photo itself)."""
    import cv2
    import dataclasses
    from cbir.searchable import decode_query
    queries = []
    for query in ukbench_subset.queries:
        path = str(tmp_path / f"{os.path.splitext(query.name)[0]}.png")
        cv2.imwrite(path, cv2.cvtColor(np.rot90(decode_query(query.path, color=True), 3), cv2.COLOR_RGB2BGR))
        queries.append(dataclasses.replace(query, path=path))
    sideways = dataclasses.replace(ukbench_subset, queries=queries)
    turned = dataclasses.replace(blcf_index.pipeline.search, query_rotations=(0, 90, 270))
    plain = run_queries(blcf_index, sideways, progress=False).scores["N-S"]
    searched = run_queries(blcf_index, sideways, turned, progress=False)
    upright = run_queries(blcf_index, ukbench_subset, progress=False).scores["N-S"]
    assert searched.scores["N-S"] >= plain + 0.5 and searched.scores["N-S"] >= upright - 0.2
    assert [ranking[0] for ranking in searched.rankings] == [q.name for q in ukbench_subset.queries]


def test_a_query_box_turns_with_the_query(blcf_index, ukbench_subset):
    """A box on a photo turned sideways, searched at 0, 90 and 270 degrees, scores the box of the
    upright photo exactly (its 90-degree view is that box, conv positions outside it dropped)."""
    import dataclasses
    from cbir.searchable import decode_query, rotate_query
    photo = decode_query(ukbench_subset.queries[7].path, color=True)
    box = (40, 30, 250, 200)
    sideways, sideways_box = rotate_query(photo, box, 270)
    turned = dataclasses.replace(blcf_index.pipeline.search, query_rotations=(0, 90, 270))
    upright = blcf_index.search(photo, box=box, top_k=5)
    found = {r.name: r.score for r in blcf_index.search(sideways, box=sideways_box, options=turned)}
    assert upright[0].name == ukbench_subset.queries[7].name
    assert all(found[r.name] >= r.score - 1e-6 for r in upright)
    assert found[upright[0].name] == pytest.approx(upright[0].score, abs=1e-6)
