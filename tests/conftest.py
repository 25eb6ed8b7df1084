"""Shared fixtures: the real benchmark images in ../shared/data."""
from __future__ import annotations

import dataclasses
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


@pytest.fixture(scope="session")
def blcf_parts(data_dir, tmp_path_factory):
    """A BLCF pipeline with 64-d whitening and a 400-word (20^2) vocabulary, both learned on UKBench
    objects 50-79 (not searched): (pipeline, whitening, vocabulary, feature cache folder)."""
    from bovw.vocabulary import VocabularyConfig
    from cbir.build import learn_local_whitening, train_vocabulary
    from cbir.pipelines import get_pipeline
    cache = str(tmp_path_factory.mktemp("blcf"))
    blcf = get_pipeline("blcf")
    small = VocabularyConfig(branching=20, depth=2)
    pipeline = dataclasses.replace(blcf, build=dataclasses.replace(blcf.build, local_whitening_dim=64, vocabulary=small))
    train = [os.path.join(data_dir, "ukbench", f"ukbench{i:05d}.jpg") for i in range(200, 320)]
    whitening, _ = learn_local_whitening(train, pipeline, cache, progress=False)
    vocabulary, _ = train_vocabulary(train, pipeline, cache_dir=cache, progress=False, whitening=whitening)
    return pipeline, whitening, vocabulary, cache


@pytest.fixture(scope="session")
def blcf_index(blcf_parts, ukbench_subset):
    """A BLCF index of the 60-image UKBench subset."""
    from cbir.evaluate import index_dataset
    from cbir.retrieval_index import RetrievalIndex
    pipeline, whitening, vocabulary, cache = blcf_parts
    index = RetrievalIndex(pipeline, vocabulary, whitening, cache_dir=cache)
    index_dataset(index, ukbench_subset, progress=False)
    return index


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def holidays_paths(data_dir) -> list[str]:
    """The first 40 Holidays photos (groups 1000-1027), as paths."""
    folder = os.path.join(data_dir, "holidays")
    return [os.path.join(folder, name) for name in sorted(os.listdir(folder)) if name.endswith(".jpg")][:40]


@pytest.fixture(scope="session")
def holidays_index(holidays_paths, small_vocabulary, feature_cache_dir):
    """A single-process sift-bow index of ``holidays_paths`` (the vocabulary learned on UKBench images)."""
    from cbir.retrieval_index import RetrievalIndex
    index = RetrievalIndex("sift-bow", small_vocabulary, cache_dir=feature_cache_dir)
    index.add_images(holidays_paths, n_jobs=2, progress=False)
    return index
