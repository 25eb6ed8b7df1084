import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.slow

from cbir.build import BuildError, build_index, empty_index, learn_global_whitening, learn_hamming  # noqa: E402
from cbir.evaluate import index_dataset, run_queries  # noqa: E402
from cbir.fusion_index import FusionIndex  # noqa: E402
from cbir.global_index import GlobalIndex  # noqa: E402
from cbir.retrieval_index import RetrievalIndex  # noqa: E402
from cbir.searchable import load_index  # noqa: E402
from index.search_options import SearchOptions  # noqa: E402


@pytest.fixture(scope="module")
def fusion(ukbench_subset, small_vocabulary, feature_cache_dir, data_dir):
    """sift-he (the session's small vocabulary) and rmac-diffusion (whitening learned on other
    UKBench images) over the 60-image subset."""
    import os
    others = [os.path.join(data_dir, "ukbench", f"ukbench{i:05d}.jpg") for i in range(200, 320)]
    hamming, _ = learn_hamming(ukbench_subset.database_paths, "sift-he", small_vocabulary, feature_cache_dir,
                               progress=False)
    whitening, _ = learn_global_whitening(others, "rmac", feature_cache_dir, progress=False)
    index = FusionIndex("fusion", RetrievalIndex("sift-he", small_vocabulary, hamming=hamming,
                                                 cache_dir=feature_cache_dir),
                        GlobalIndex("rmac-diffusion", whitening, feature_cache_dir), feature_cache_dir)
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
    with pytest.raises(ValueError, match="a fusion index takes fusion settings only"):
        loaded.search(query, options=SearchOptions(region_rerank=5))
    with pytest.raises(BuildError, match="use build_index"):
        empty_index("fusion")
    with pytest.raises(Exception, match="needs a vocabulary or training images"):
        build_index("fusion")
