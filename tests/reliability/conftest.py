import os

import pytest

from tests.reliability.corpus import make_corpus


@pytest.fixture(scope="session")
def corpus(tmp_path_factory, data_dir):
    folder = str(tmp_path_factory.mktemp("corpus"))
    paths = make_corpus(folder, os.path.join(data_dir, "ukbench", "ukbench00004.jpg"),
                        os.path.join(data_dir, "ukbench", "ukbench00020.jpg"))
    return folder, paths
