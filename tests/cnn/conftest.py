"""Fixtures of the CNN tests: conv maps of real UKBench images, computed once per session."""
import os

import numpy as np
import pytest


@pytest.fixture(scope="session")
def training_maps(data_dir, tmp_path_factory):
    """'global' maps (1280, h, w) of UKBench images 400-439 (10 objects x 4 views), their paths,
    and the objects' pairs and labels: the training input of the tests (the known UKBench
    groups stand in for mined pairs, so that the tests check training, not mining)."""
    from cnn.feature_maps import FeatureMapExtractor
    paths = [os.path.join(data_dir, "ukbench", f"ukbench{i:05d}.jpg") for i in range(400, 440)]
    extractor = FeatureMapExtractor(cache_dir=str(tmp_path_factory.mktemp("training-maps")), device="cpu")
    maps = [extractor(p)["global"] for p in paths]
    labels = np.arange(len(paths)) // 4
    pairs = np.array([(i, j) for i in range(len(paths)) for j in range(i + 1, len(paths)) if labels[i] == labels[j]])
    return maps, paths, pairs, labels
