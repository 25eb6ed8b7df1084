"""Two builds with the same seed and inputs give identical rankings and identical arrays."""
import numpy as np

from bovw.vocabulary import VocabularyConfig
from cbir.build import train_vocabulary
from cbir.pipelines import get_pipeline
from cbir.retrieval_index import RetrievalIndex
from cbir.searchable import FORMAT_VERSION
from index.persistence import load_arrays


def _build(ukbench_subset, cache, directory):
    vocabulary, _ = train_vocabulary(ukbench_subset.database_paths[:20], get_pipeline("sift-bow"),
                                     VocabularyConfig(branching=8, depth=2, seed=5), cache, n_jobs=2, progress=False)
    index = RetrievalIndex("sift-sv", vocabulary, cache_dir=cache)
    index.add_images(ukbench_subset.database_paths[:20], ukbench_subset.database[:20], n_jobs=2, progress=False)
    index.save(directory)
    return index


def test_same_seed_same_index(ukbench_subset, feature_cache_dir, tmp_path):
    a = _build(ukbench_subset, feature_cache_dir, str(tmp_path / "a"))
    b = _build(ukbench_subset, str(tmp_path / "fresh-cache"), str(tmp_path / "b"))
    for path in ukbench_subset.database_paths[:5]:
        assert [(r.name, r.score, r.inliers) for r in a.search(path)] == \
            [(r.name, r.score, r.inliers) for r in b.search(path)]
    meta_a, arrays_a = load_arrays(str(tmp_path / "a"), RetrievalIndex.FORMAT, FORMAT_VERSION)
    meta_b, arrays_b = load_arrays(str(tmp_path / "b"), RetrievalIndex.FORMAT, FORMAT_VERSION)
    assert meta_a == meta_b and arrays_a.keys() == arrays_b.keys()
    assert all(np.array_equal(arrays_a[k], arrays_b[k]) for k in arrays_a)
