"""Distributed build and sharded search: throughput on a local Dask cluster, query latency of shards.

Build (``--part build``): the first ``--images`` Holidays photos are indexed with
``sift-bow`` three ways in one run, without a feature cache (so every image is
decoded and extracted): the single-process build (``add_images`` with ``--jobs``
extraction processes), and ``cbir.distributed.build_distributed`` on a
``LocalCluster`` of 1 and of 2 worker processes (one thread each), partitions of
``--partition-size`` images, merged into one index. Throughput is given as a ratio
to the single-process build, and every distributed index is checked to equal it
array for array. The scheduler's overhead per partition is the extra time of a
build cut into one-image partitions over the same build in one partition (1
worker, features cached, so that the overhead is not hidden by extraction):
``(t(n partitions) - t(1 partition)) / (n - 1)``; it holds the task round trip,
loading the template and saving a partition.

Search (``--part search``): collections of synthetic images with the real word
statistics (as ``benchmarks.inverted_file_scale``: feature counts and word
frequencies of Holidays + UKBench quantized in the 10^6-word ``sift-bow`` tree),
built as one index and as ``--shards`` shards of the same images in the same
order (both held in memory: about 8 GB at 10^6 images). Queries of ``--query-words`` words arrive quantized (the index's
vocabulary is a placeholder of the right shape); latency is ``search(top_k=100)``
with ``sift-bow`` options: query vector, every shard's scores and shortlist, the
merge; shards are scored one after the other in this process. The rankings and
scores are checked to be equal. The latency of one shard alone is what a fan-out
over machines would wait for (plus the network).
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np

from benchmarks.common import DEFAULT_DATA, write_result
from benchmarks.inverted_file_scale import SyntheticImages, real_word_statistics


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["build", "search", "all"], default="all", help="what to measure")
    parser.add_argument("--data", default=DEFAULT_DATA, help="shared data folder (holidays/, ukbench/)")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "cbir-bench-features"),
                        help="feature cache for the word statistics and the vocabulary's training images")
    parser.add_argument("--images", type=int, default=160, help="Holidays photos built (build part)")
    parser.add_argument("--partition-size", type=int, default=16, help="images per Dask task (build part)")
    parser.add_argument("--overhead-images", type=int, default=32, help="images of the overhead measurement")
    parser.add_argument("--vocab-shape", default="10x4", help="build part: vocabulary BxL trained on 200 UKBench photos")
    parser.add_argument("--jobs", type=int, default=2, help="extraction processes of the single-process build")
    parser.add_argument("--sizes", default="100000,1000000", help="search part: collection sizes (images)")
    parser.add_argument("--shards", type=int, default=4, help="search part: shards")
    parser.add_argument("--shape", default="10x6", help="search part: vocabulary of the word statistics")
    parser.add_argument("--query-words", type=int, default=1000, help="features per query (1 word each)")
    parser.add_argument("--queries", type=int, default=100, help="queries timed per collection")
    parser.add_argument("--batch", type=int, default=100_000, help="images generated per batch")
    parser.add_argument("--name", default="distributed", help="result file prefix under benchmarks/results")
    return parser.parse_args()


def timed(function, *args, **kwargs):
    """(seconds, result) of one call."""
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, result


def same_index(a, b) -> bool:
    (meta, arrays), (other_meta, other_arrays) = a.state_dict(), b.state_dict()
    return meta == other_meta and arrays.keys() == other_arrays.keys() and \
        all(np.array_equal(arrays[name], other_arrays[name]) for name in arrays)


def measure_build(args) -> str:
    from distributed import Client, LocalCluster

    from bovw.vocabulary import VocabularyConfig
    from cbir.build import train_vocabulary
    from cbir.distributed import build_distributed
    from cbir.retrieval_index import RetrievalIndex
    from cbir.searchable import load_index
    from index.datasets import holidays, ukbench
    paths = holidays(os.path.join(args.data, "holidays")).database_paths[:args.images]
    b, depth = (int(v) for v in args.vocab_shape.split("x"))
    vocabulary, _ = train_vocabulary(ukbench(os.path.join(args.data, "ukbench")).database_paths[:200], "sift-bow",
                                     VocabularyConfig(branching=b, depth=depth), args.cache, args.jobs, progress=False)
    work = tempfile.mkdtemp(prefix="cbir-distributed-bench-")
    try:
        single = RetrievalIndex("sift-bow", vocabulary)
        single_s, _ = timed(single.add_images, paths, n_jobs=args.jobs, progress=False)
        rows, cached = [], os.path.join(work, "cache")
        for workers in (1, 2):
            with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
                    Client(cluster) as client:
                client.run(lambda: None)  # workers up
                output = os.path.join(work, f"index-{workers}")
                seconds, _ = timed(build_distributed, RetrievalIndex("sift-bow", vocabulary), paths, output, client,
                                   partition_size=args.partition_size, progress=False)
                rows.append((workers, seconds, same_index(load_index(output), single)))
                if workers == 1:  # scheduler overhead: many one-image partitions against one partition
                    subset = paths[:args.overhead_images]
                    index = RetrievalIndex("sift-bow", vocabulary, cache_dir=cached)
                    build_distributed(index, subset, os.path.join(work, "warm"), client, progress=False)
                    one, _ = timed(build_distributed, index, subset, os.path.join(work, "one"), client,
                                   partition_size=len(subset), progress=False)
                    many, _ = timed(build_distributed, index, subset, os.path.join(work, "many"), client,
                                    partition_size=1, progress=False)
                    overhead_ms = (many - one) / (len(subset) - 1) * 1e3
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = [f"{len(paths)} Holidays photos (325x243), sift-bow with a {vocabulary.n_words}-word vocabulary "
             f"({args.vocab_shape}, trained on 200 UKBench photos), no feature cache: every image decoded and "
             f"extracted. Single-process build: `add_images(n_jobs={args.jobs})` (loky processes). Dask: "
             f"`LocalCluster(n_workers=N, threads_per_worker=1, processes=True)`, partitions of "
             f"{args.partition_size} images, merged into one index (cluster start-up not counted). Same run, "
             f"same machine (other jobs may share its 2 cores: compare the ratios).", "",
             "| build | seconds | images/s | throughput vs single-process | index equal to single-process |",
             "|---|---|---|---|---|",
             f"| single process, {args.jobs} extraction processes | {single_s:.1f} | {len(paths) / single_s:.1f} | 1.00 | - |"]
    for workers, seconds, equal in rows:
        lines.append(f"| Dask, {workers} worker{'s' if workers > 1 else ''} | {seconds:.1f} | {len(paths) / seconds:.1f} | "
                     f"{single_s / seconds:.2f} | {'yes' if equal else 'NO'} |")
    lines += ["", f"Scheduler overhead per partition (1 worker, {args.overhead_images} cached images, one-image "
              f"partitions against one partition): {overhead_ms:.0f} ms (task round trip, template load, "
              f"partition save)."]
    return "\n".join(lines)


def placeholder_vocabulary(n_words: int, shape: str):
    """A vocabulary tree of the shape ``shape`` (n_words words) with 2-d zero centres: queries arrive quantized."""
    from bovw.vocabulary import VocabularyTree
    b, depth = (int(v) for v in shape.split("x"))
    assert b ** depth == n_words
    return VocabularyTree([np.zeros((b ** (level + 1), 2), np.float32) for level in range(depth)])


def synthetic_index(size: int, synthetic: SyntheticImages, vocabulary, n_shards: int, batch: int):
    """The ``size`` synthetic images as one index (``n_shards`` 1) or as a sharded index; the images are
    drawn in the same batches either way, so both hold the same images in the same order."""
    from cbir.retrieval_index import RetrievalIndex
    from cbir.sharded_index import ShardedIndex
    from index.names import ImageNames
    shards = [RetrievalIndex("sift-bow", vocabulary) for _ in range(n_shards)]
    bounds = np.linspace(0, size, 5).round().astype(int)  # batch boundaries of a 4-way split, whatever n_shards
    owner = np.minimum(np.arange(size) * n_shards // size, n_shards - 1)
    for start, end in zip(bounds[:-1], bounds[1:]):
        for first in range(start, end, batch):
            last = min(first + batch, end)
            images = synthetic.images(last - first)
            for shard in np.unique(owner[first:last]):
                mine = np.flatnonzero(owner[first:last] == shard)
                shards[shard].inverted_file.add([images[i] for i in mine])
    for shard in range(n_shards):
        shards[shard].names = ImageNames(f"img{i:08d}" for i in np.flatnonzero(owner == shard))
    return shards[0] if n_shards == 1 else ShardedIndex(shards)


def query_ms(indexes: list, queries) -> tuple[np.ndarray, list]:
    """(ms per query (n_indexes, n_queries), per index the (name, score) rankings of ``search(top_k=100)``);
    the indexes take turns on each query, so that other jobs on the machine slow them alike."""
    from index.ranking import LocalQuery
    times, rankings = np.zeros((len(indexes), len(queries))), [[] for _ in indexes]
    for column, words in enumerate(queries):
        query = LocalQuery(np.zeros((len(words), 4), np.float32), words[:, None])
        for row, index in enumerate(indexes):
            seconds, results = timed(index.search, query, top_k=100, options="sift-bow")
            times[row, column] = seconds * 1e3
            rankings[row].append([(r.name, r.score) for r in results])
    return times, rankings


def measure_search(args) -> str:
    p, counts, n_words, _ = real_word_statistics(args)
    vocabulary = placeholder_vocabulary(n_words, args.shape)
    lines = [f"Synthetic images with the real word statistics ({n_words}-word sift-bow tree, {counts.mean():.0f} "
             f"features per image, as `benchmarks.inverted_file_scale`); {args.queries} queries of "
             f"{args.query_words} words, `search(top_k=100)` with sift-bow options; {args.shards} shards scored one "
             f"after the other in one process. The merged index, the sharded one (the same images in the same "
             f"order) and its first shard alone take turns on each query; rankings and scores of the merged and "
             f"sharded indexes are checked equal on every query.", "",
             "| images | postings | merged ms median | p95 | sharded ms median | p95 | ratio (median) | "
             "one shard ms median | p95 | one shard's postings (GB) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for size in (int(s) for s in args.sizes.split(",")):
        drawn = SyntheticImages(p, counts, seed=1)
        queries = [drawn.words(args.query_words) for _ in range(args.queries)]
        merged = synthetic_index(size, SyntheticImages(p, counts, seed=0), vocabulary, 1, args.batch)
        sharded = synthetic_index(size, SyntheticImages(p, counts, seed=0), vocabulary, args.shards, args.batch)
        query_ms([merged, sharded, sharded.shards[0]], queries[:3])  # compile, touch the pages
        times, rankings = query_ms([merged, sharded, sharded.shards[0]], queries)
        assert rankings[0] == rankings[1], "the sharded ranking differs from the merged one"
        shard = sharded.shards[0].inverted_file
        shard_gb = sum(a.nbytes for a in shard.state_dict()[1].values()) / 1e9
        median, p95 = np.median(times, axis=1), np.percentile(times, 95, axis=1)
        lines.append(f"| {size:,} | {merged.inverted_file.n_postings:,} | {median[0]:.1f} | {p95[0]:.1f} | "
                     f"{median[1]:.1f} | {p95[1]:.1f} | {median[1] / median[0]:.2f} | {median[2]:.1f} | {p95[2]:.1f} | "
                     f"{shard.n_postings:,} ({shard_gb:.2f} GB) |")
        print(lines[-1], flush=True)
        del merged, sharded
    return "\n".join(lines)


def main():
    args = parse_args()
    if args.part in ("build", "all"):
        print(f"written to {write_result(args.name + '_build', measure_build(args))}")
    if args.part in ("search", "all"):
        print(f"written to {write_result(args.name + '_search', measure_search(args))}")


if __name__ == "__main__":
    main()
