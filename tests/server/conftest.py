"""Saved indexes of the 60-image UKBench subset for the server: SIFT (bag of words, verified
by its sift-sv pipeline), R-MAC (its first 24 images) and BLCF."""
from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def served_dirs(built_index, blcf_index, ukbench_subset, feature_cache_dir, tmp_path_factory) -> dict[str, str]:
    """Index kind -> saved index folder (``sift``, ``rmac``, ``blcf``)."""
    from cbir.evaluate import index_dataset
    from cbir.global_index import GlobalIndex
    root = tmp_path_factory.mktemp("served")
    dirs = {kind: str(root / kind) for kind in ("sift", "rmac", "blcf")}
    built_index.save(dirs["sift"])
    blcf_index.save(dirs["blcf"])
    rmac = GlobalIndex("rmac", cache_dir=feature_cache_dir)
    index_dataset(rmac, ukbench_subset.restricted_to(ukbench_subset.database[:24]), n_jobs=2, progress=False)
    rmac.save(dirs["rmac"])
    return dirs


@pytest.fixture(scope="session")
def ukbench_root(data_dir) -> str:
    return os.path.join(data_dir, "ukbench")
