"""CNN global descriptors (and, with --methods, any pipeline) on Holidays-811 and UKBench-1000.

Whitening is learned on the *other* dataset than the one evaluated (UKBench for
Holidays and the reverse). Reports the score, the backbone time per image
(measured on ``--timing-images`` images with no cache), the descriptor memory
per image and the query time.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from benchmarks.common import DEFAULT_DATA, OTHER, benchmark_datasets, write_result
from bovw.extraction import iter_features
from cbir.build import learn_global_whitening
from cbir.evaluate import index_dataset, run_queries
from cbir.global_index import GlobalIndex
from cbir.pipelines import PIPELINES, get_pipeline
from cnn.feature_maps import FeatureMapExtractor

GLOBAL_PIPELINES = [name for name, p in PIPELINES.items() if p.kind == "global"]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DEFAULT_DATA, help="shared data folder (holidays/, ukbench/)")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "cbir-bench-maps"),
                        help="feature-map cache folder")
    parser.add_argument("--methods", default=",".join(GLOBAL_PIPELINES), help="global pipelines")
    parser.add_argument("--jobs", type=int, default=2, help="images processed in parallel")
    parser.add_argument("--timing-images", type=int, default=50, help="images timed through the backbone")
    parser.add_argument("--name", default="cnn_global", help="result file name under benchmarks/results")
    return parser.parse_args()


def main():
    args = parse_args()
    datasets = benchmark_datasets(args.data)
    backbone = get_pipeline(args.methods.split(",")[0]).build.backbone
    extractor = FeatureMapExtractor(backbone, None)
    timed = datasets["holidays"].database_paths[:args.timing_images]
    extractor(timed[0])
    start = time.perf_counter()
    for path in timed[1:]:
        extractor(path)
    backbone_ms = (time.perf_counter() - start) / (len(timed) - 1) * 1e3
    cached = FeatureMapExtractor(backbone, args.cache)
    for dataset in datasets.values():  # fill the cache once, in parallel
        for _ in iter_features(dataset.database_paths, cached, None, n_jobs=args.jobs, verbose=False):
            pass
    lines = [f"Backbone {backbone.name}, images at their own size up to {backbone.max_side} px "
             f"(Holidays 325x243, UKBench 320x240): {backbone_ms:.0f} ms per image on the CPU "
             f"(1 torch thread, {len(timed) - 1} Holidays images, no cache).",
             "Whitening learned on the other dataset (UKBench for Holidays, Holidays for UKBench).", "",
             "| pipeline | Holidays-811 mAP | UKBench-1000 N-S | bytes per image | query ms median (H / U) |",
             "|---|---|---|---|---|"]
    for method in args.methods.split(","):
        pipeline = get_pipeline(method)
        cells, times, size = [], [], 0
        for name, dataset in datasets.items():
            whitening, _ = learn_global_whitening(datasets[OTHER[name]].database_paths, pipeline, args.cache,
                                                  progress=False)
            index = GlobalIndex(pipeline, whitening, args.cache)
            index_dataset(index, dataset, progress=False)
            result = run_queries(index, dataset, progress=False)
            (metric, score), = result.scores.items()
            cells.append(f"{score:.4f}")
            times.append(f"{np.median(result.query_ms):.2f}")
            size = (index.dense.vectors.nbytes + index.dense.regions.nbytes) // len(index)
        lines.append(f"| {method} | {cells[0]} | {cells[1]} | {size} | {' / '.join(times)} |")
        print(lines[-1], flush=True)
    print(f"written to {write_result(args.name, chr(10).join(lines))}")


if __name__ == "__main__":
    main()
