"""Spatial re-ranking and query expansion on Holidays-811 and UKBench-1000.

Trains one vocabulary tree (on both datasets' images), then reports on that same
vocabulary: the score of ``sift-bow``, ``sift-sv`` and ``sift-sv-qe`` (and their
variants), and, for each homography estimator, the time to re-rank the top 100
of one query (median, p95) with its accuracy.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time

import numpy as np

from benchmarks.common import DEFAULT_DATA, benchmark_datasets, shared_index_row, write_result
from bovw.vocabulary import VocabularyConfig, VocabularyTree
from cbir.build import local_descriptors
from cbir.pipelines import get_pipeline
from cbir.retrieval_index import RetrievalIndex
from index.ranking import shortlist
from index.reranking import spatial_rerank


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DEFAULT_DATA, help="shared data folder (holidays/, ukbench/)")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "cbir-bench-features"),
                        help="feature cache folder")
    parser.add_argument("--shape", default="10x6", help="vocabulary shape BxL (default 10x6: 1M words)")
    parser.add_argument("--assignments", type=int, default=3, help="query multiple assignment")
    parser.add_argument("--methods", default="sift-bow,sift-sv,sift-sv-qe,sift-sv:ransac,sift-sv:magsac",
                        help="pipelines to compare; NAME:ESTIMATOR swaps the homography estimator")
    parser.add_argument("--estimators", default="similarity-lo,ransac,magsac,usac-accurate",
                        help="homography estimators to time")
    parser.add_argument("--timing-queries", type=int, default=100, help="queries per set for the estimator timing")
    parser.add_argument("--jobs", type=int, default=2, help="extraction threads")
    parser.add_argument("--name", default="reranking", help="result file name under benchmarks/results")
    return parser.parse_args()


def main():
    args = parse_args()
    base = get_pipeline("sift-bow")
    datasets = benchmark_datasets(args.data)
    descriptors = np.concatenate([local_descriptors(d.database_paths, base, args.cache, args.jobs, False)[0]
                                  for d in datasets.values()])
    b, depth = (int(v) for v in args.shape.split("x"))
    start = time.perf_counter()
    vocabulary = VocabularyTree.train(descriptors, VocabularyConfig(branching=b, depth=depth, seed=0), verbose=False)
    lines = [f"Vocabulary: {vocabulary.n_words} words ({b}^{depth}), trained on Holidays + UKBench "
             f"({len(descriptors)} RootSIFT descriptors) in {time.perf_counter() - start:.0f} s; "
             f"query multiple assignment {args.assignments}.\n",
             "| pipeline | Holidays-811 mAP | UKBench-1000 N-S | query ms median (H / U) | query ms p95 (H / U) |",
             "|---|---|---|---|---|"]
    indexes = {}
    for method in args.methods.split(","):
        pipeline_name, _, estimator = method.partition(":")
        pipeline = get_pipeline(pipeline_name)
        options = dataclasses.replace(pipeline.search, query_assignments=args.assignments)
        if estimator:
            options = dataclasses.replace(options, verification=dataclasses.replace(options.verification,
                                                                                    estimator=estimator))
        lines.append(shared_index_row(method, pipeline, options, datasets, indexes,
                                      lambda p: RetrievalIndex(p, vocabulary, cache_dir=args.cache), args.jobs))
        print(lines[-1], flush=True)

    lines += ["", f"Re-ranking the top 100 of the first {args.timing_queries} queries of each set "
                  f"(bow ranking, same vocabulary), per estimator:", "",
              "| estimator | jobs | ms per query median | ms p95 | verified per query (mean) |", "|---|---|---|---|---|"]
    sv = get_pipeline("sift-sv").search.verification
    bow = dataclasses.replace(base.search, query_assignments=args.assignments)
    for estimator in args.estimators.split(","):
        for n_jobs in (1, 2):
            config = dataclasses.replace(sv, estimator=estimator)
            times, verified = [], []
            for name, dataset in datasets.items():
                index = indexes[name]
                for query in dataset.queries[:args.timing_queries]:
                    prepared = index.prepare_query(query.path, options=bow)
                    ranking = shortlist(index.inverted_file.scores(prepared.words), config.top_k)
                    start = time.perf_counter()
                    reranked = spatial_rerank(prepared.keypoints, prepared.words[:, 0], ranking, index.images, config,
                                              n_jobs=n_jobs)
                    times.append((time.perf_counter() - start) * 1e3)
                    verified.append(sum(e.verified for e in reranked))
            lines.append(f"| {estimator} | {n_jobs} | {np.median(times):.1f} | {np.percentile(times, 95):.1f} "
                         f"| {np.mean(verified):.1f} |")
            print(lines[-1], flush=True)
    print(f"written to {write_result(args.name, chr(10).join(lines))}")


if __name__ == "__main__":
    main()
