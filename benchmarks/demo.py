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

from cbir.build import build_index
from cbir.evaluate import index_dataset, run_queries
from cbir.pipelines import get_pipeline
from cbir.retrieval_index import load_vocabulary_for, save_vocabulary
from cbir.searchable import load_index
from index.datasets import holidays, ukbench
from index.persistence import MANIFEST


def dataset_index(pipeline, dataset, datasets, other, work, cache, jobs):
    """The dataset's index for ``pipeline``, built once and reused by every pipeline built the same way.

    Local-feature pipelines train their vocabulary (and Hamming embedding) on all datasets'
    images, the vocabulary shared by every pipeline of that shape; global pipelines learn
    their whitening on the ``other`` dataset.
    """
    if pipeline.kind == "global":
        directory = os.path.join(work, f"index-{pipeline.name}-{dataset.name}")
    else:
        shape = f"{pipeline.build.vocabulary.branching}x{pipeline.build.vocabulary.depth}"
        directory = os.path.join(work, f"index-sift-{shape}{'-he' if pipeline.build.hamming else ''}-{dataset.name}")
    if os.path.exists(os.path.join(directory, MANIFEST)):
        index = load_index(directory, cache_dir=cache)
        if index.serves(pipeline):
            return index
        print(f"{directory} was built otherwise than today's {pipeline.name} (an older engine): building it again")
    if pipeline.kind == "global":
        index = build_index(pipeline, whiten_paths=other.database_paths, cache_dir=cache, n_jobs=jobs)
    else:
        paths = [p for d in datasets for p in d.database_paths]
        vocab_dir = os.path.join(work, f"vocabulary-sift-{shape}")
        vocabulary = None
        if os.path.exists(os.path.join(vocab_dir, MANIFEST)):
            try:
                vocabulary = load_vocabulary_for(vocab_dir, pipeline)
            except ValueError as exc:
                print(f"{exc}: training it again")
        if vocabulary is None:
            print(f"training a {pipeline.build.vocabulary.n_words}-word vocabulary on {len(paths)} images "
                  f"(Holidays + UKBench)")
        start = time.perf_counter()
        index = build_index(pipeline, vocabulary, train_paths=paths, cache_dir=cache, n_jobs=jobs)
        if vocabulary is None:
            print(f"  {time.perf_counter() - start:.0f} s")
            save_vocabulary(index.vocabulary, vocab_dir, pipeline)
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
            index = dataset_index(pipeline, dataset, datasets, other, args.work, cache, args.jobs)
            result = run_queries(index, dataset, method)
            (metric, score), = result.scores.items()
            rows.append((method, dataset.name, metric, score, np.median(result.query_ms)))
            top = index.search(dataset.queries[0].path, top_k=4, options=method)
            print(f"{method} {dataset.name}: {dataset.queries[0].name} -> "
                  + ", ".join(f"{r.name} ({r.score:.3f})" for r in top))

    print(f"\n{'method':12s} {'dataset':10s} {'metric':>7s} {'score':>7s} {'query ms':>9s}")
    for method, name, metric, score, ms in rows:
        print(f"{method:12s} {name:10s} {metric:>7s} {score:7.4f} {ms:9.1f}")


if __name__ == "__main__":
    main()
