"""Builds on a local Dask cluster of 2 worker processes: the index of a single-process build, whether
merged or sharded and even when a worker process dies mid-build; the vocabulary of a local training."""
import os
import signal
import sys

import cloudpickle
import numpy as np
import pytest
from distributed import Client, LocalCluster, WorkerPlugin, get_task_stream

from bovw.vocabulary import VocabularyConfig
from cbir.build import train_vocabulary
from cbir.cli import main
from cbir.distributed import build_distributed
from cbir.retrieval_index import RetrievalIndex, load_vocabulary, save_vocabulary
from cbir.searchable import load_index
from cbir.sharded_index import ShardedIndex

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        yield client


def assert_same_index(built, expected):
    """Same names, postings, statistics, keypoints and learned parts, bit for bit."""
    (meta, arrays), (expected_meta, expected_arrays) = built.state_dict(), expected.state_dict()
    assert meta == expected_meta and arrays.keys() == expected_arrays.keys()
    for name in arrays:
        np.testing.assert_array_equal(arrays[name], expected_arrays[name], err_msg=name)


def rankings(index, queries, options="sift-sv-qe"):
    return [[(r.name, r.score, r.inliers) for r in index.search(q, top_k=10, options=options)] for q in queries]


def test_a_distributed_build_is_the_single_process_build(client, holidays_index, holidays_paths, tmp_path):
    missing = str(tmp_path / "missing.jpg")
    output = str(tmp_path / "index")
    report = build_distributed(holidays_index.empty_like(), holidays_paths + [missing], output, client,
                               partition_size=6, progress=False)
    assert report.skipped == [(missing, "no such file")] and report.extracted + report.cached == 40
    built = load_index(output)
    assert isinstance(built, RetrievalIndex) and not os.path.exists(output + ".parts")
    assert_same_index(built, holidays_index)
    assert rankings(built, holidays_paths[::10]) == rankings(holidays_index, holidays_paths[::10])


def test_a_sharded_distributed_build_ranks_as_the_single_process_build(client, holidays_index, holidays_paths,
                                                                       tmp_path):
    output = str(tmp_path / "sharded")
    build_distributed(holidays_index.empty_like(), holidays_paths, output, client, n_shards=3, partition_size=6,
                      progress=False)
    built = load_index(output, mmap=True)
    assert isinstance(built, ShardedIndex) and [len(shard) for shard in built.shards] == [18, 12, 10]
    assert rankings(built, holidays_paths[5::10]) == rankings(holidays_index, holidays_paths[5::10])


class KillOnce(WorkerPlugin):
    """Kills its worker process, as a crash would, when it starts running a task whose key holds
    ``key_part``: once (the marker file remembers it), so the restarted worker survives."""

    def __init__(self, marker: str, key_part: str):
        self.marker, self.key_part = marker, key_part

    def transition(self, key, start, finish, **kwargs):
        if finish == "executing" and self.key_part in str(key) and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.slow  # 8 s: extraction without a cache, and a worker restart
def test_a_worker_killed_mid_build_loses_no_image(client, holidays_index, holidays_paths, tmp_path):
    marker = str(tmp_path / "killed")
    before = set(client.run(os.getpid).values())
    client.register_plugin(KillOnce(marker, "cbir-partition-00002"), name="kill-once")
    try:
        index = RetrievalIndex("sift-bow", holidays_index.vocabulary, cache_dir=str(tmp_path / "cache"))
        report = build_distributed(index, holidays_paths, str(tmp_path / "index"), client, partition_size=5,
                                   progress=False)
    finally:
        client.unregister_worker_plugin("kill-once")
    assert os.path.exists(marker) and set(client.run(os.getpid).values()) != before  # a worker died mid-build
    assert report.extracted + report.cached == 40 and not report.skipped
    assert_same_index(load_index(str(tmp_path / "index")), holidays_index)


def test_the_vocabulary_trained_on_the_cluster_is_the_local_one(client, ukbench_subset, small_vocabulary,
                                                                feature_cache_dir):
    with get_task_stream(client) as stream:
        vocabulary, _ = train_vocabulary(ukbench_subset.database_paths, "sift-bow",
                                         VocabularyConfig(branching=10, depth=3, seed=0), feature_cache_dir,
                                         n_jobs=2, progress=False, client=client)
    assert len(stream.data) >= 3  # the k-means ran on the workers
    for level, (centers, expected) in enumerate(zip(vocabulary.centers, small_vocabulary.centers)):
        np.testing.assert_array_equal(centers, expected, err_msg=f"level {level}")


def test_cbir_vocab_on_the_cluster(client, ukbench_subset, small_vocabulary, feature_cache_dir, tmp_path):
    output = str(tmp_path / "vocab")
    assert main(["vocab", *ukbench_subset.database_paths, "-o", output, "--branching", "10", "--depth", "3",
                 "--scheduler", client.scheduler.address, "--cache", feature_cache_dir]) == 0
    np.testing.assert_array_equal(load_vocabulary(output).centers[-1], small_vocabulary.centers[-1])


def test_cbir_index_on_the_cluster(client, holidays_index, holidays_paths, small_vocabulary, feature_cache_dir,
                                   tmp_path, capsys):
    save_vocabulary(small_vocabulary, str(tmp_path / "vocab"), "sift-bow")
    output = str(tmp_path / "index")
    assert main(["index", *holidays_paths[:20], "-o", output, "--vocab", str(tmp_path / "vocab"), "--scheduler",
                 client.scheduler.address, "--shards", "2", "--partition-size", "4", "--cache", feature_cache_dir]) == 0
    assert "20 images (20 added) in 2 shards" in capsys.readouterr().out
    assert main(["index", *holidays_paths[20:], "-o", output, "--add", "--scheduler", client.scheduler.address,
                 "--cache", feature_cache_dir]) == 1  # a sharded index grows through add_images, not the cluster
    assert "cannot be built that way (drop --scheduler)" in capsys.readouterr().err
    assert main(["index", *holidays_paths[:4], "-o", str(tmp_path / "asmk"), "--method", "sift-asmk", "--shards", "2",
                 "--vocab", str(tmp_path / "vocab"), "--cache", feature_cache_dir]) == 1
    assert "do not shard" in capsys.readouterr().err  # refused before any work
    built = load_index(output)
    assert built.info()["images_per_shard"] == [12, 8]
    three = str(tmp_path / "three")  # one default partition would make one shard: partitions shrink to fit
    assert main(["index", *holidays_paths[:20], "-o", three, "--vocab", str(tmp_path / "vocab"), "--scheduler",
                 client.scheduler.address, "--shards", "3", "--cache", feature_cache_dir]) == 0
    assert load_index(three).info()["images_per_shard"] == [7, 7, 6]
    assert len(built) == 20 and built.search(holidays_paths[3], top_k=1)[0].name == os.path.basename(holidays_paths[3])


def test_cbir_index_add_refuses_shards(holidays_paths, small_vocabulary, feature_cache_dir, tmp_path, capsys):
    save_vocabulary(small_vocabulary, str(tmp_path / "vocab"), "sift-bow")
    output = str(tmp_path / "index")
    assert main(["index", *holidays_paths[:3], "-o", output, "--vocab", str(tmp_path / "vocab"),
                 "--cache", feature_cache_dir]) == 0
    assert main(["index", *holidays_paths[3:5], "-o", output, "--add", "--shards", "2",
                 "--cache", feature_cache_dir]) == 1
    assert "--add keeps" in capsys.readouterr().err and len(load_index(output)) == 3
