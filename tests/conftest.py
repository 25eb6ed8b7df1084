"""Shared fixtures: the real benchmark images in ../shared/data."""
from __future__ import annotations

import os

import numpy as np
import pytest

DATA = os.environ.get("CBIR_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))


@pytest.fixture(scope="session")
def data_dir() -> str:
    if not os.path.isdir(DATA):
        pytest.fail(f"benchmark data not found at {DATA} (set CBIR_DATA)")
    return DATA


@pytest.fixture(scope="session")
def ukbench_subset(data_dir):
    """The first 60 UKBench images (15 objects x 4 views) as a Dataset."""
    from index.datasets import ukbench
    dataset = ukbench(os.path.join(data_dir, "ukbench"))
    return dataset.restricted_to(dataset.database[:60])


@pytest.fixture(scope="session")
def feature_cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("features"))


@pytest.fixture(scope="session")
def small_vocabulary(ukbench_subset, feature_cache_dir):
    """A 1000-word (10^3) tree trained on the subset's RootSIFT descriptors."""
    from bovw.vocabulary import VocabularyConfig
    from cbir.build import train_vocabulary
    vocabulary, _ = train_vocabulary(ukbench_subset.database_paths, "sift-bow",
                                     VocabularyConfig(branching=10, depth=3, seed=0),
                                     feature_cache_dir, n_jobs=2, progress=False)
    return vocabulary


@pytest.fixture(scope="session")
def built_index(ukbench_subset, small_vocabulary, feature_cache_dir):
    from cbir.evaluate import index_dataset
    from cbir.retrieval_index import RetrievalIndex
    index = RetrievalIndex("sift-bow", small_vocabulary, cache_dir=feature_cache_dir)
    index_dataset(index, ukbench_subset, n_jobs=2, progress=False)
    return index


@pytest.fixture
def rng():
    return np.random.default_rng(0)
