"""The main job, end to end: build indexes of Holidays-811 and UKBench-1000, run
every query, print the score table.

Run by ``make demo``. SIFT methods share one vocabulary trained on both datasets'
images; CNN methods learn their whitening on the *other* dataset. Everything is
built under ``--work`` (feature caches, vocabulary, indexes) and reused on a
second run.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from cbir.evaluate import index_dataset, run_queries
from cbir.pipelines import get_pipeline
from cbir.retrieval_index import (RetrievalIndex, learn_hamming, load_index, load_vocabulary, save_vocabulary,
                                  train_vocabulary)
from cnn.global_index import GlobalIndex, learn_whitening
from cnn.pipelines import GlobalPipeline
from index.datasets import holidays, ukbench
from index.persistence import MANIFEST


def sift_index(pipeline, dataset, datasets, work, cache, jobs):
    """The dataset's local-feature index, built once: the vocabulary (and Hamming
    embedding) are trained on all datasets' images; pipelines differing only in
    re-ranking share one index."""
    shape = f"{pipeline.vocabulary.branching}x{pipeline.vocabulary.depth}"
    directory = os.path.join(work, f"index-sift-{shape}{'-he' if pipeline.hamming else ''}-{dataset.name}")
    if os.path.exists(os.path.join(directory, MANIFEST)):
        index = load_index(directory, cache_dir=cache)
        index.pipeline = pipeline
        return index
    paths = [p for d in datasets for p in d.database_paths]
    vocab_dir = os.path.join(work, f"vocabulary-sift-{shape}")
    if os.path.exists(os.path.join(vocab_dir, MANIFEST)):
        vocabulary = load_vocabulary(vocab_dir)
    else:
        print(f"training a {pipeline.vocabulary.n_words}-word vocabulary on {len(paths)} images (Holidays + UKBench)")
        start = time.perf_counter()
        vocabulary, report = train_vocabulary(paths, pipeline, cache_dir=cache, n_jobs=jobs)
        print(f"  {time.perf_counter() - start:.0f} s; {report.summary()}")
        save_vocabulary(vocabulary, vocab_dir)
    hamming = learn_hamming(paths, pipeline, vocabulary, cache, jobs)[0] if pipeline.hamming else None
    index = RetrievalIndex(vocabulary, pipeline, cache_dir=cache, hamming=hamming)
    index_dataset(index, dataset, n_jobs=jobs)
    index.save(directory)
    return index


def cnn_index(pipeline, dataset, other, work, cache, jobs):
    """The dataset's global-descriptor index, whitening learned on ``other``, built once."""
    directory = os.path.join(work, f"index-{pipeline.name}-{dataset.name}")
    if os.path.exists(os.path.join(directory, MANIFEST)):
        return load_index(directory, cache_dir=cache)
    whitening, _ = learn_whitening(other.database_paths, pipeline, cache)
    index = GlobalIndex(pipeline, whitening, cache)
    index_dataset(index, dataset, n_jobs=jobs)
    index.save(directory)
    return index


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.path.join("..", "shared", "data"), help="benchmark data folder")
    parser.add_argument("--work", default="work", help="output folder (caches, vocabulary, indexes)")
    parser.add_argument("--methods", default="sift-bow,sift-sv,sift-sv-qe,sift-he,sift-he-sv-qe,rmac",
                        help="pipelines to run (comma-separated)")
    parser.add_argument("--jobs", type=int, default=2, help="extraction threads")
    args = parser.parse_args()

    cache = os.path.join(args.work, "features")
    datasets = [holidays(os.path.join(args.data, "holidays")), ukbench(os.path.join(args.data, "ukbench"))]
    rows = []
    for method in args.methods.split(","):
        pipeline = get_pipeline(method)
        for dataset, other in zip(datasets, datasets[::-1]):
            if isinstance(pipeline, GlobalPipeline):
                index = cnn_index(pipeline, dataset, other, args.work, cache, args.jobs)
            else:
                index = sift_index(pipeline, dataset, datasets, args.work, cache, args.jobs)
            result = run_queries(index, dataset)
            (metric, score), = result.scores.items()
            rows.append((method, dataset.name, metric, score, np.median(result.query_ms)))
            top = index.search(dataset.queries[0].path, top_k=4)
            print(f"{method} {dataset.name}: {dataset.queries[0].name} -> "
                  + ", ".join(f"{r.name} ({r.score:.3f})" for r in top))

    print(f"\n{'method':12s} {'dataset':10s} {'metric':>7s} {'score':>7s} {'query ms':>9s}")
    for method, name, metric, score, ms in rows:
        print(f"{method:12s} {name:10s} {metric:>7s} {score:7.4f} {ms:9.1f}")


if __name__ == "__main__":
    main()
