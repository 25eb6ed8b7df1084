import dataclasses
import os
import pickle

import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.slow

from cbir.build import BuildError, build_index, empty_index, learn_global_whitening, learn_hamming  # noqa: E402
from cbir.evaluate import index_dataset, run_queries  # noqa: E402
from cbir.fusion_index import FusionIndex  # noqa: E402
from cbir.global_index import GlobalIndex  # noqa: E402
from cbir.retrieval_index import RetrievalIndex  # noqa: E402
from cbir.pipelines import get_pipeline  # noqa: E402
from cbir.searchable import load_index  # noqa: E402
from index.persistence import IndexFormatError  # noqa: E402
from index.search_options import FusionConfig, SearchOptions  # noqa: E402


@pytest.fixture(scope="module")
def new_fusion(ukbench_subset, small_vocabulary, feature_cache_dir, data_dir):
    """Empty fusion indexes: sift-he (the session's small vocabulary) and rmac-diffusion (whitening
    learned on other UKBench images)."""
    others = [os.path.join(data_dir, "ukbench", f"ukbench{i:05d}.jpg") for i in range(200, 320)]
    hamming, _ = learn_hamming(ukbench_subset.database_paths, "sift-he", small_vocabulary, feature_cache_dir,
                               progress=False)
    whitening, _ = learn_global_whitening(others, "rmac-rr", feature_cache_dir, progress=False)
    return lambda pipeline="fusion": FusionIndex(
        pipeline, RetrievalIndex("sift-he", small_vocabulary, hamming=hamming, cache_dir=feature_cache_dir),
        GlobalIndex("rmac-diffusion", whitening, feature_cache_dir), feature_cache_dir)


@pytest.fixture(scope="module")
def fusion(new_fusion, ukbench_subset):
    """A fusion index of the 60-image UKBench subset."""
    index = new_fusion()
    index_dataset(index, ukbench_subset, n_jobs=2, progress=False)
    return index


def test_fusion_ranks_verified_matches_first_and_scores_at_least_its_weaker_part(fusion, ukbench_subset):
    fused = run_queries(fusion, ukbench_subset, progress=False).scores["N-S"]
    parts = [run_queries(part, ukbench_subset, options, progress=False).scores["N-S"]
             for part, options in ((fusion.local, "sift-he-sv-qe"), (fusion.dense, "rmac-diffusion"))]
    assert fused >= min(parts) and fused >= 3.5
    results = fusion.search(ukbench_subset.queries[8].path, top_k=10)
    assert results[0].name == "ukbench00008.jpg" and results[0].inliers >= 10
    verified = [r.inliers is not None and r.inliers >= 10 for r in results]
    assert verified == sorted(verified, reverse=True)  # verified results come first
    assert len(fusion.search(ukbench_subset.queries[8].path)) == len(fusion) == 60


def test_fusion_index_saves_removes_and_refuses_foreign_options(fusion, ukbench_subset, feature_cache_dir, tmp_path):
    fusion.save(str(tmp_path / "fusion"))
    loaded = load_index(str(tmp_path / "fusion"), cache_dir=feature_cache_dir)
    assert isinstance(loaded, FusionIndex) and loaded.serves("fusion")
    query = ukbench_subset.queries[13].path
    assert [(r.name, r.score) for r in loaded.search(query)] == [(r.name, r.score) for r in fusion.search(query)]
    info = loaded.info()
    assert info["local_part"]["pipeline"] == "sift-he" and info["dense_part"]["diffusion_graph"]["nodes"] == 60
    loaded.remove(["ukbench00013.jpg"])
    assert len(loaded.local) == len(loaded.dense) == 59
    assert "ukbench00013.jpg" not in [r.name for r in loaded.search(query)]
    with pytest.raises(ValueError, match="'sift-he' is built differently"):
        loaded.search(query, options="sift-he")
    with pytest.raises(ValueError, match="no verified pairs"):
        loaded.search(query, options="fusion-ve")
    with pytest.raises(ValueError, match="a fusion index takes fusion settings only"):
        loaded.search(query, options=SearchOptions(region_rerank=5))
    with pytest.raises(BuildError, match="use build_index"):
        empty_index("fusion")
    with pytest.raises(Exception, match="needs a vocabulary or training images"):
        build_index("fusion")


def test_verified_edges_join_only_same_object_images_and_follow_additions_and_removals(new_fusion, ukbench_subset):
    pipeline = dataclasses.replace(get_pipeline("fusion"), search=SearchOptions(fusion=FusionConfig(verified_edges=10)))
    index = new_fusion(pipeline)
    paths, names = ukbench_subset.database_paths, ukbench_subset.database
    index.add_images(paths[:40], names[:40], n_jobs=2, progress=False)
    index.add_images(paths[40:], names[40:], n_jobs=2, progress=False)  # verified against the first 40 too

    def objects(idx):
        return [[int(idx.names[s][7:12]) // 4 for s in pair] for pair in idx.verified.pairs]

    assert len(index.verified) >= 45 and all(a == b for a, b in objects(index))  # of 90 same-object pairs
    assert len({tuple(p) for p in objects(index)}) >= 12  # spread over the 15 objects
    plain = run_queries(index.dense, ukbench_subset, "rmac-diffusion", progress=False).scores["N-S"]
    fused = run_queries(index, ukbench_subset, progress=False).scores["N-S"]
    graph = index.dense.graph
    assert graph.verified_edges == 10 and graph.edges == len(index.verified)
    joined = run_queries(index.dense, ukbench_subset, dataclasses.replace(
        get_pipeline("rmac-diffusion").search, diffusion=dataclasses.replace(
            get_pipeline("rmac-diffusion").search.diffusion, verified_edges=10)), progress=False).scores["N-S"]
    assert joined >= plain and min(joined, fused) >= 3.9, (plain, joined, fused)  # lifts: benchmarks/refinement.py
    before = len(index.verified)
    index.remove(["ukbench00005.jpg", "ukbench00030.jpg"])
    assert 0 < len(index.verified) < before and all(a == b for a, b in objects(index))
    assert index.dense.graph is None  # rebuilt with the renumbered pairs by the next search
    meta, arrays = index.state_dict()
    again = FusionIndex.from_state_dict(meta, arrays)
    assert again.verified.pairs.tolist() == index.verified.pairs.tolist()
    index.search(ukbench_subset.queries[0].path)
    meta, arrays = index.state_dict()
    meta["dense"]["graph"]["edges"] += 1
    with pytest.raises(IndexFormatError, match="other verified pairs"):
        FusionIndex.from_state_dict(meta, arrays)._check_sizes("saved")


def test_revisitop_protocol_with_query_boxes_runs_the_refined_pipelines(new_fusion, data_dir, feature_cache_dir,
                                                                       tmp_path):
    """A landmark set in the revisitop layout: two Sacre-Coeur photos queried by a box around the
    basilica, the eight others to find among 40 Holidays photos."""
    from index.datasets import load_dataset
    photos = sorted(os.listdir(os.path.join(data_dir, "sacre_coeur")))
    distractors = sorted(os.listdir(os.path.join(data_dir, "holidays")))[:40]
    os.makedirs(tmp_path / "jpg")
    for i, name in enumerate(photos):
        os.symlink(os.path.join(data_dir, "sacre_coeur", name), tmp_path / "jpg" / (f"q{i}.jpg" if i < 2 else f"sc{i}.jpg"))
    for name in distractors:
        os.symlink(os.path.join(data_dir, "holidays", name), tmp_path / "jpg" / name)
    imlist = [f"sc{i}" for i in range(2, len(photos))] + [os.path.splitext(n)[0] for n in distractors]
    from PIL import Image
    boxes = []
    for i in range(2):
        w, h = Image.open(tmp_path / "jpg" / f"q{i}.jpg").size
        boxes.append([w * 0.2, h * 0.1, w * 0.8, h * 0.9])
    gnd = {"imlist": imlist, "qimlist": ["q0", "q1"],
           "gnd": [{"easy": list(range(8)), "hard": [], "junk": [], "bbx": box} for box in boxes]}
    with open(tmp_path / "gnd_rsacre.pkl", "wb") as handle:
        pickle.dump(gnd, handle)
    dataset = load_dataset("revisitop", str(tmp_path))
    index = new_fusion("fusion-ve")
    regional = GlobalIndex("rmac-rr-diffusion", index.dense.whitening, feature_cache_dir)
    for each in (index, regional):
        index_dataset(each, dataset, n_jobs=2, progress=False)
    assert len(index.verified) >= 20  # the 8 database photos of the basilica verify each other
    for part, options in ((index, "fusion-ve"), (index, "fusion"), (index.dense, "rmac-diffusion"),
                          (index.dense, "rmac-qe"), (regional, "rmac-rr-diffusion")):
        scores = run_queries(part, dataset, options, progress=False).scores
        assert scores["M"] >= 0.9, (options, scores)
