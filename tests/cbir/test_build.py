"""Learning a pipeline's parts and building its index: one sequence, clear refusals, bounded memory."""
import dataclasses

import numpy as np
import pytest

from cbir.build import BuildError, DescriptorSample, build_index, local_descriptors
from cbir.global_index import GlobalIndex
from cbir.retrieval_index import RetrievalIndex


def test_a_small_stream_is_kept_whole_in_order():
    sample = DescriptorSample(100, seed=0)
    rows = np.arange(60, dtype=np.float32).reshape(30, 2)
    sample.add(rows[:10])
    sample.add(rows[10:])
    assert np.array_equal(sample.rows(), rows)


def test_a_long_stream_is_sampled_uniformly_and_reproducibly():
    def run(seed):
        sample = DescriptorSample(2000, seed)
        for start in range(0, 200_000, 997):
            sample.add(np.arange(start, min(start + 997, 200_000), dtype=np.float32)[:, None])
        return sample.rows().ravel()
    rows = run(0)
    assert len(rows) == 2000 == len(np.unique(rows)) and np.array_equal(rows, run(0))
    counts = np.histogram(rows, bins=10, range=(0, 200_000))[0]
    assert counts.min() > 140 and counts.max() < 260  # ~200 per tenth of the stream, not the first 2000
    assert not np.array_equal(rows, run(1))


def test_training_descriptors_are_capped_by_bytes(ukbench_subset, feature_cache_dir):
    paths = ukbench_subset.database_paths[:6]
    everything, _ = local_descriptors(paths, "sift-bow", feature_cache_dir)
    capped, _ = local_descriptors(paths, "sift-bow", feature_cache_dir, max_bytes=500 * 128 * 4)
    assert len(capped) == 500 < len(everything)
    assert len({r.tobytes() for r in capped} - {r.tobytes() for r in everything}) == 0


def test_build_index_gives_the_right_kind_or_says_what_is_missing(small_vocabulary, ukbench_subset):
    assert isinstance(build_index("sift-sv", small_vocabulary), RetrievalIndex)
    gem, rmac = build_index("gem"), build_index("rmac")  # no whitening images given
    assert isinstance(gem, GlobalIndex) and gem.whitening is None  # none ships for GeM: L2 only
    assert rmac.whitening is not None and rmac.whitening.output_dim == 1280  # the shipped R-MAC whitening
    assert rmac.whitening.projection.dtype == np.float32
    with pytest.raises(BuildError, match="needs a vocabulary or training images"):
        build_index("sift-bow")
    with pytest.raises(BuildError, match="learns a Hamming embedding: give training images"):
        build_index("sift-he", small_vocabulary)
    with pytest.raises(BuildError, match="learns an ASMK\\* binarisation: give training images"):
        build_index("sift-asmk", small_vocabulary)
    with pytest.raises(BuildError, match="trains its vocabulary on whitened descriptors"):
        build_index("blcf", small_vocabulary, train_paths=ukbench_subset.database_paths[:2])


def test_sift_asmk_is_built_with_its_binarisation_and_ranks_the_right_images_first(small_vocabulary, ukbench_subset,
                                                                                    feature_cache_dir):
    """build_index learns the ASMK* binarisation on the training images (quantized as the index does);
    the index ranks each object's views first and serves the ASMK* pipelines alone."""
    from cbir.evaluate import index_dataset
    subset = dataclasses.replace(ukbench_subset, database=ukbench_subset.database[:20],
                                 queries=ukbench_subset.queries[:20], _positives=[
                                     g & set(ukbench_subset.database[:20]) for g in ukbench_subset._positives[:20]])
    index = build_index("sift-asmk", small_vocabulary, train_paths=ukbench_subset.database_paths[20:40],
                        cache_dir=feature_cache_dir, n_jobs=2, progress=False)
    assert index.asmk is not None and index.hamming is None and index.pipeline.build.asmk
    index_dataset(index, subset, n_jobs=2, progress=False)
    for query in (2, 9, 17):
        results = index.search(subset.database_paths[query], top_k=4, options="sift-asmk-sv")
        assert results[0].slot == query and {r.slot // 4 for r in results} == {query // 4}
    assert index.info()["pipelines_served"] == ["sift-asmk", "sift-asmk-sv"]
