"""sift-bow accuracy and speed on Holidays-811 and UKBench-1000 at several vocabulary sizes.

For each vocabulary shape (b^L words) it trains one vocabulary tree, indexes
both datasets with it, runs every query and reports mAP / N-S, vocabulary
training time, indexing throughput and query latency. Features come from the
feature cache; ``--cold`` first measures extraction throughput with no cache.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time

import numpy as np

from benchmarks.common import DEFAULT_DATA, benchmark_datasets, write_result
from bovw.extraction import ExtractionReport, iter_features
from bovw.vocabulary import VocabularyConfig, VocabularyTree
from cbir.build import local_descriptors
from cbir.evaluate import index_dataset, run_queries
from cbir.pipelines import get_pipeline
from cbir.retrieval_index import RetrievalIndex, local_feature_cache, read_local_features


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DEFAULT_DATA, help="shared data folder (holidays/, ukbench/)")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "cbir-bench-features"),
                        help="feature cache folder")
    parser.add_argument("--shapes", default="141x2,10x5,10x6",
                        help="vocabulary shapes BxL, comma-separated (default: 20k, 100k, 1M words)")
    parser.add_argument("--train", default="both", choices=["both", "other"],
                        help="train each vocabulary on both datasets, or on the other dataset than the "
                             "one evaluated (independent vocabulary)")
    parser.add_argument("--assignments", default="1,3",
                        help="query multiple-assignment values to report (comma-separated)")
    parser.add_argument("--method", default="sift-bow", help="pipeline")
    parser.add_argument("--jobs", type=int, default=2, help="extraction threads")
    parser.add_argument("--cold", action="store_true", help="also time extraction with an empty cache")
    parser.add_argument("--name", default="sift_bow", help="result file name under benchmarks/results")
    return parser.parse_args()


def main():
    args = parse_args()
    pipeline = get_pipeline(args.method)
    datasets = benchmark_datasets(args.data)
    lines = []
    if args.cold:
        with tempfile.TemporaryDirectory() as empty:
            paths = datasets["holidays"].database_paths
            start = time.perf_counter()
            report = ExtractionReport()
            for _ in iter_features(paths, lambda path: read_local_features(pipeline.build, path),
                                   local_feature_cache(pipeline.build, empty), report, n_jobs=args.jobs, verbose=False):
                pass
            seconds = time.perf_counter() - start
            lines.append(f"Extraction (RootSIFT, {args.jobs} threads, no cache): {len(paths) / seconds:.1f} "
                         f"images/s on Holidays ({len(paths)} images, {seconds:.1f} s)\n")
    descriptors = {}
    for name, dataset in datasets.items():
        descriptors[name] = local_descriptors(dataset.database_paths, pipeline, args.cache, args.jobs, False)[0]
    lines.append(f"Training descriptors: Holidays {len(descriptors['holidays'])}, "
                 f"UKBench {len(descriptors['ukbench'])} (RootSIFT).\n")
    lines.append("| words (b^L) | trained on | vocab train s | eval set | MA | score | index img/s "
                 "| query ms median | query ms p95 |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    assignments = [int(a) for a in args.assignments.split(",")]
    for shape in args.shapes.split(","):
        b, depth = (int(v) for v in shape.split("x"))
        config = VocabularyConfig(branching=b, depth=depth, seed=0)
        plans = [("both", list(datasets))] if args.train == "both" else \
            [(other, [name]) for name in datasets for other in datasets if other != name]
        for train_name, eval_names in plans:
            x = np.concatenate(list(descriptors.values())) if train_name == "both" else descriptors[train_name]
            start = time.perf_counter()
            vocabulary = VocabularyTree.train(x, config, verbose=False)
            train_s = time.perf_counter() - start
            for eval_name in eval_names:
                dataset = datasets[eval_name]
                index = RetrievalIndex(pipeline, vocabulary, cache_dir=args.cache)
                start = time.perf_counter()
                index_dataset(index, dataset, n_jobs=args.jobs, progress=False)
                index_rate = len(index) / (time.perf_counter() - start)
                for ma in assignments:
                    options = dataclasses.replace(pipeline.search, query_assignments=ma)
                    result = run_queries(index, dataset, options, progress=False)
                    (metric, score), = result.scores.items()
                    lines.append(f"| {config.n_words} ({b}^{depth}) | {train_name} | {train_s:.1f} | {eval_name} "
                                 f"| {ma} | {metric} {score:.4f} | {index_rate:.0f} | "
                                 f"{np.median(result.query_ms):.2f} | {np.percentile(result.query_ms, 95):.2f} |")
                    print(lines[-1], flush=True)
    path = write_result(args.name, "\n".join(lines))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
