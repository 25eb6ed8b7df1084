"""A sharded index ranks exactly as the merged one: same names, scores and inliers, after additions
and removals too, saved and loaded; a shard that cannot be loaded is named."""
import dataclasses
import os

import numpy as np
import pytest

from cbir.pipelines import get_pipeline
from cbir.retrieval_index import RetrievalIndex
from cbir.searchable import load_index
from cbir.sharded_index import ShardedIndex
from index.persistence import IndexFormatError


def rankings(index, queries, options, top_k=10):
    return [[(r.name, r.score, r.inliers) for r in index.search(q, top_k=top_k, options=options)] for q in queries]


@pytest.fixture
def merged(holidays_index):
    """A copy of the single-process index (tests change it)."""
    return RetrievalIndex.concatenate([holidays_index])


@pytest.mark.parametrize("options", ["sift-bow", "sift-sv", "sift-sv-qe"])
def test_three_shards_rank_as_the_merged_index(merged, holidays_paths, options):
    sharded = ShardedIndex.split(merged, 3)
    assert [len(shard) for shard in sharded.shards] == [13, 14, 13] and list(sharded.names) == list(merged.names)
    queries = holidays_paths[::8]
    assert rankings(sharded, queries, options) == rankings(merged, queries, options)
    full = sharded.search(queries[0])  # the whole ranking, every score
    assert [(r.name, r.score) for r in full] == [(r.name, r.score) for r in merged.search(queries[0])]


def test_hamming_embedding_shards_rank_as_the_merged_index(holidays_paths, ukbench_subset, small_vocabulary,
                                                          feature_cache_dir):
    from cbir.build import build_index
    merged = build_index("sift-he", small_vocabulary, train_paths=ukbench_subset.database_paths[:20],
                         cache_dir=feature_cache_dir, progress=False)
    merged.add_images(holidays_paths, progress=False)
    sharded = ShardedIndex.split(merged, 3)
    queries = holidays_paths[3::9]
    assert rankings(sharded, queries, "sift-he-sv-qe") == rankings(merged, queries, "sift-he-sv-qe")
    merged.remove(holidays_paths[10:12])
    sharded.remove(holidays_paths[10:12])
    assert rankings(sharded, queries, "sift-he-sv-qe") == rankings(merged, queries, "sift-he-sv-qe")
    he = get_pipeline("sift-he").search
    inter_image = dataclasses.replace(he, hamming=dataclasses.replace(he.hamming, inter_image=True))
    with pytest.raises(ValueError, match="inter-image burstiness"):  # its counts span the whole collection
        sharded.search(queries[0], options=inter_image)


def test_after_removing_and_adding_the_shards_share_the_new_statistics(merged, holidays_paths, data_dir):
    sharded = ShardedIndex.split(merged, 3)
    gone = [holidays_paths[i] for i in (0, 14, 15, 39)]  # from every shard
    extra = sorted(os.path.join(data_dir, "holidays", name) for name in os.listdir(os.path.join(data_dir, "holidays"))
                   if name.endswith(".jpg"))[40:46]
    for index in (merged, sharded):
        index.remove(gone)
        index.add_images(extra, progress=False)
    assert [len(shard) for shard in sharded.shards] == [12, 12, 18]
    sharded.consolidate()  # what every search does first
    for shard in sharded.shards:
        np.testing.assert_array_equal(shard.inverted_file.idf, merged.inverted_file.idf)
    queries = holidays_paths[1::5] + extra[:2]
    assert rankings(sharded, queries, "sift-sv-qe") == rankings(merged, queries, "sift-sv-qe")


def test_saved_and_loaded_memory_mapped_it_ranks_the_same(merged, holidays_paths, tmp_path):
    sharded = ShardedIndex.split(merged, 3)
    directory = str(tmp_path / "sharded")
    sharded.save(directory)
    sharded.save(directory)  # a second save replaces the shards: only the listed ones stay
    assert len([entry for entry in os.listdir(directory) if entry.startswith("shard-")]) == 3
    loaded = load_index(directory, mmap=True, verify=False)
    assert isinstance(loaded, ShardedIndex) and loaded.info()["images"] == 40
    assert loaded.shards[1].vocabulary is loaded.shards[0].vocabulary  # one copy of the learned parts
    queries = holidays_paths[2::10]
    assert rankings(loaded, queries, "sift-sv-qe") == rankings(merged, queries, "sift-sv-qe")
    rebuilt = ShardedIndex.from_state_dict(*sharded.state_dict())
    assert rankings(rebuilt, queries, "sift-bow") == rankings(merged, queries, "sift-bow")


def test_a_shard_that_cannot_be_loaded_is_named(merged, tmp_path):
    directory = str(tmp_path / "sharded")
    ShardedIndex.split(merged, 3).save(directory)
    broken = sorted(entry for entry in os.listdir(directory) if entry.startswith("shard-"))[1]
    postings = [f for f in os.listdir(os.path.join(directory, broken)) if f.endswith("image_slots.npy")][0]
    os.remove(os.path.join(directory, broken, postings))
    with pytest.raises(IndexFormatError, match=f"shard {broken} cannot be loaded.*missing"):
        load_index(directory)


def test_shards_built_otherwise_are_refused(merged, holidays_index):
    other = RetrievalIndex.concatenate([holidays_index])
    other.root = "/elsewhere"
    with pytest.raises(ValueError, match="shard 1 has another pipeline, root or learned parts"):
        ShardedIndex([merged, other])


def test_cnn_global_shards_rank_as_the_merged_index(ukbench_subset, feature_cache_dir, tmp_path):
    from cbir.build import build_index
    from cbir.sharded_index import ShardedGlobalIndex, split_index
    from index.search_options import ExpansionConfig
    merged = build_index("rmac-rr", cache_dir=feature_cache_dir, progress=False)
    merged.add_images(ukbench_subset.database_paths[:16], progress=False)
    sharded = split_index(merged, 3)
    assert isinstance(sharded, ShardedGlobalIndex) and [len(shard) for shard in sharded.shards] == [5, 6, 5]
    queries = ukbench_subset.database_paths[1:16:5]
    expanded = dataclasses.replace(merged.pipeline.search, expansion=ExpansionConfig(max_results=3))
    for options in (None, expanded):  # region re-ranking of the top 100; then also query expansion
        assert rankings(sharded, queries, options) == rankings(merged, queries, options)
    sharded.remove(ukbench_subset.database_paths[6:8])
    merged.remove(ukbench_subset.database_paths[6:8])
    sharded.save(str(tmp_path / "sharded"))
    loaded = load_index(str(tmp_path / "sharded"), mmap=True)
    assert isinstance(loaded, ShardedGlobalIndex)
    assert rankings(loaded, queries, expanded) == rankings(merged, queries, expanded)
    with pytest.raises(ValueError, match="diffusion needs the whole collection's graph"):
        loaded.search(queries[0], options="rmac-rr-diffusion")
