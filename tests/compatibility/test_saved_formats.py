"""Indexes saved by earlier versions keep loading (as faiss keeps its old index files).

``tests/data/format-v1`` holds tiny indexes written by the engine before the
build/search split (format 1). They must load, rank exactly as they ranked when
saved, and re-save in today's format. Never regenerate them.
"""
import json
import os
import shutil

import pytest

from cbir.retrieval_index import load_vocabulary
from cbir.searchable import FORMAT_VERSION, load_index
from index.persistence import MANIFEST, IndexFormatError, manifest_checksum

FORMAT1 = os.path.join(os.path.dirname(__file__), "..", "data", "format-v1")
EXPECTED = json.load(open(os.path.join(FORMAT1, "expected.json")))


def top5(index, data_dir):
    query = os.path.join(data_dir, "ukbench", EXPECTED["query"])
    return [[r.name, round(r.score, 6), r.inliers] for r in index.search(query, top_k=5)]


@pytest.mark.parametrize("name", sorted(EXPECTED["results"]))
def test_format1_index_ranks_as_when_it_was_saved(name, data_dir, tmp_path):
    index = load_index(os.path.join(FORMAT1, name))
    assert index.pipeline.name == name and len(index) == 12
    assert top5(index, data_dir) == EXPECTED["results"][name]
    index.save(str(tmp_path / "resaved"))
    manifest = json.load(open(tmp_path / "resaved" / MANIFEST))
    assert manifest["version"] == FORMAT_VERSION
    assert top5(load_index(str(tmp_path / "resaved")), data_dir) == EXPECTED["results"][name]


def test_format1_vocabulary_loads():
    assert load_vocabulary(os.path.join(FORMAT1, "vocabulary")).n_words == 64


def test_a_newer_format_is_refused_with_the_versions_this_engine_reads(tmp_path):
    directory = tmp_path / "future"
    shutil.copytree(os.path.join(FORMAT1, "sift-bow"), directory)
    manifest = json.load(open(directory / MANIFEST))
    manifest["version"] = 99
    manifest["checksum"] = manifest_checksum(manifest)
    json.dump(manifest, open(directory / MANIFEST, "w"))
    with pytest.raises(IndexFormatError, match="format version 99 cannot be read.*reads versions 1, 2"):
        load_index(str(directory))
