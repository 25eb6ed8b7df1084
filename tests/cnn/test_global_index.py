import dataclasses
import os

import pytest

pytest.importorskip("torch")

from cbir.build import learn_global_whitening  # noqa: E402
from cbir.evaluate import index_dataset, run_queries  # noqa: E402
from cbir.global_index import GlobalIndex  # noqa: E402
from cbir.searchable import load_index  # noqa: E402
from index.search_options import SearchOptions  # noqa: E402
from index.spatial_verification import VerificationConfig  # noqa: E402


@pytest.fixture(scope="module")
def map_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("maps"))


@pytest.fixture(scope="module")
def whitening_images(data_dir):
    """Whitening is learned on other images than the ones searched: UKBench objects 50-79."""
    return [os.path.join(data_dir, "ukbench", f"ukbench{i:05d}.jpg") for i in range(200, 320)]


@pytest.mark.parametrize("method", [pytest.param("gem", marks=pytest.mark.slow), "rmac-rr"])
def test_cnn_pipelines_rank_the_right_ukbench_images_first(ukbench_subset, whitening_images, map_cache, method):
    whitening, _ = learn_global_whitening(whitening_images, method, map_cache, progress=False)
    index = GlobalIndex(method, whitening, map_cache)
    index_dataset(index, ukbench_subset, progress=False)
    result = run_queries(index, ukbench_subset, progress=False)
    assert result.scores["N-S"] >= 3.2
    top = index.search(ukbench_subset.queries[9].path, top_k=4)
    assert top[0].name == ukbench_subset.queries[9].name


def test_global_index_save_load_and_remove(ukbench_subset, whitening_images, map_cache, tmp_path):
    whitening, _ = learn_global_whitening(whitening_images, "rmac", map_cache, progress=False)
    index = GlobalIndex("rmac", whitening, map_cache)
    index_dataset(index, ukbench_subset, progress=False)
    index.save(str(tmp_path / "idx"))
    loaded = load_index(str(tmp_path / "idx"), cache_dir=map_cache)
    query = ukbench_subset.queries[3].path
    assert [(r.name, r.score) for r in loaded.search(query)] == [(r.name, r.score) for r in index.search(query)]
    loaded.remove([ukbench_subset.database[3]])
    assert ukbench_subset.database[3] not in [r.name for r in loaded.search(query)]
    assert len(loaded) == len(index) - 1
    crop = loaded.search(query, top_k=3, box=(40, 30, 280, 210))
    assert crop[0].name in {f"ukbench0000{i}.jpg" for i in range(4)}
    with pytest.raises(ValueError, match="smaller than 32 pixels"):
        loaded.search(query, box=(0, 0, 20, 20))
    with pytest.raises(ValueError, match="region re-ranking needs an index that stores R-MAC regions"):
        loaded.search(query, options=dataclasses.replace(loaded.pipeline.search, region_rerank=100))
    with pytest.raises(ValueError, match="'rmac-rr' is built differently"):
        loaded.search(query, options="rmac-rr")
    with pytest.raises(ValueError, match="spatial verification needs a local-feature index"):
        loaded.search(query, options=SearchOptions(verification=VerificationConfig()))


def test_rmac_rr_index_serves_rmac_search(ukbench_subset, whitening_images, map_cache):
    """An index that stores regions searches with or without region re-ranking, per call."""
    whitening, _ = learn_global_whitening(whitening_images, "rmac-rr", map_cache, progress=False)
    index = GlobalIndex("rmac-rr", whitening, map_cache)
    index_dataset(index, ukbench_subset, progress=False)
    query = ukbench_subset.queries[6].path
    plain = GlobalIndex("rmac", whitening, map_cache)
    index_dataset(plain, ukbench_subset, progress=False)
    unreranked = index.search(query, options=dataclasses.replace(index.pipeline.search, region_rerank=0))
    assert [(r.name, r.score) for r in unreranked] == [(r.name, r.score) for r in plain.search(query)]
    assert [r.score for r in index.search(query)] != [r.score for r in unreranked]


def test_diffusion_graph_is_saved_with_the_index_and_rebuilt_after_changes(ukbench_subset, whitening_images,
                                                                          map_cache, tmp_path):
    whitening, _ = learn_global_whitening(whitening_images, "rmac", map_cache, progress=False)
    index = GlobalIndex("rmac-diffusion", whitening, map_cache)
    index_dataset(index, ukbench_subset, progress=False)
    assert index.graph is None  # built by the first diffusion search, or by save
    assert run_queries(index, ukbench_subset, progress=False).scores["N-S"] >= 3.2
    assert index.graph.n_images == len(index)
    index.save(str(tmp_path / "idx"))
    loaded = load_index(str(tmp_path / "idx"), cache_dir=map_cache)
    assert loaded.info()["diffusion_graph"]["nodes"] == len(index)
    query = ukbench_subset.queries[5].path
    assert [(r.name, r.score) for r in loaded.search(query)] == [(r.name, r.score) for r in index.search(query)]
    # the same index serves plain rmac search, and diffusion options per call
    assert loaded.serves("rmac") and [r.name for r in loaded.search(query, options="rmac")][:1] == ["ukbench00005.jpg"]
    loaded.remove(["ukbench00006.jpg"])
    assert loaded.graph is None and loaded.info()["diffusion_graph"].startswith("none")
    names = [r.name for r in loaded.search(query, top_k=3)]
    assert names[0] == "ukbench00005.jpg" and "ukbench00006.jpg" not in names
    assert loaded.graph.n_images == len(loaded) == len(index) - 1



def test_a_query_shot_sideways_is_scored_as_itself_when_searched_turned_back(ukbench_subset, map_cache):
    """A UKBench photo turned a quarter clockwise: its upright descriptor differs (similarity to the
    photo < 0.97); searched at 0, 90 and 270 degrees, its 90-degree view is the photo itself."""
    import numpy as np
    from cbir.searchable import decode_query
    index = GlobalIndex("spoc", None, map_cache)
    index_dataset(index, ukbench_subset, progress=False)
    photo = ukbench_subset.queries[5]
    sideways = np.rot90(decode_query(photo.path, color=True), 3)
    plain = {r.name: r.score for r in index.search(sideways)}
    assert plain[photo.name] < 0.97
    turned = dataclasses.replace(index.pipeline.search, query_rotations=(0, 90, 270))
    best = index.search(sideways, top_k=3, options=turned)
    assert best[0].name == photo.name and best[0].score > 0.999
    merged = index.search(sideways, options=turned)
    assert [(r.name, r.score) for r in best] == [(r.name, r.score) for r in merged[:3]]
    assert all(r.score >= plain[r.name] for r in merged)
    with pytest.raises(ValueError, match="a prepared query has one orientation"):
        index.search(index.prepare_query(sideways), options=turned)
