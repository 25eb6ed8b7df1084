"""The main job, end to end: train a vocabulary on the benchmark images, index
Holidays-811 and UKBench-1000, run every query, print the score table.

Run by ``make demo``. Everything it builds goes under ``--work``: the feature
cache, the vocabulary and one saved index per dataset (a second run reuses them).
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from cbir.evaluate import index_dataset, run_queries
from cbir.pipelines import get_pipeline
from cbir.retrieval_index import RetrievalIndex, load_vocabulary, save_vocabulary, train_vocabulary
from index.datasets import holidays, ukbench
from index.persistence import MANIFEST


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.path.join("..", "shared", "data"), help="benchmark data folder")
    parser.add_argument("--work", default="work", help="output folder (cache, vocabulary, indexes)")
    parser.add_argument("--method", default="sift-bow", help="pipeline name")
    parser.add_argument("--jobs", type=int, default=2, help="extraction threads")
    args = parser.parse_args()

    pipeline = get_pipeline(args.method)
    cache = os.path.join(args.work, "features")
    datasets = [holidays(os.path.join(args.data, "holidays")), ukbench(os.path.join(args.data, "ukbench"))]
    vocab_dir = os.path.join(args.work, f"vocabulary-{pipeline.name}")
    if os.path.exists(os.path.join(vocab_dir, MANIFEST)):
        vocabulary = load_vocabulary(vocab_dir)
    else:
        paths = [p for d in datasets for p in d.database_paths]
        print(f"training a {pipeline.vocabulary.n_words}-word vocabulary on {len(paths)} images "
              f"(Holidays + UKBench)")
        start = time.perf_counter()
        vocabulary, report = train_vocabulary(paths, pipeline, cache_dir=cache, n_jobs=args.jobs)
        print(f"  {time.perf_counter() - start:.0f} s; {report.summary()}")
        save_vocabulary(vocabulary, vocab_dir)

    rows = []
    for dataset in datasets:
        index_dir = os.path.join(args.work, f"index-{pipeline.name}-{dataset.name}")
        if os.path.exists(os.path.join(index_dir, MANIFEST)):
            index = RetrievalIndex.load(index_dir, cache_dir=cache)
        else:
            index = RetrievalIndex(vocabulary, pipeline, cache_dir=cache)
            index_dataset(index, dataset, n_jobs=args.jobs)
            index.save(index_dir)
        result = run_queries(index, dataset)
        (metric, score), = result.scores.items()
        rows.append((dataset.name, len(dataset.database), len(dataset.queries), metric, score,
                     np.median(result.query_ms)))
        example = dataset.queries[0]
        top = index.search(index.extract(example.path), top_k=5)
        print(f"{dataset.name}: query {example.name} -> " + ", ".join(f"{r.name} ({r.score:.3f})" for r in top))

    print(f"\n{pipeline.name}: {pipeline.description}")
    print(f"{'dataset':10s} {'images':>7s} {'queries':>8s} {'metric':>7s} {'score':>7s} {'query ms':>9s}")
    for name, n_images, n_queries, metric, score, ms in rows:
        print(f"{name:10s} {n_images:7d} {n_queries:8d} {metric:>7s} {score:7.4f} {ms:9.2f}")


if __name__ == "__main__":
    main()
