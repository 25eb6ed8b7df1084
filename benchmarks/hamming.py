"""Hamming-embedding pipelines on Holidays-811 and UKBench-1000.

One vocabulary and one Hamming embedding, both learned on the two sets' RootSIFT
descriptors; every listed pipeline runs on them. Reports score, query time and
bytes per posting.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time

import numpy as np

from benchmarks.common import DEFAULT_DATA, benchmark_datasets, shared_index_row, write_result
from bovw.hamming import HammingEmbedding
from bovw.vocabulary import VocabularyConfig, VocabularyTree
from cbir.build import local_descriptors
from cbir.pipelines import get_pipeline
from cbir.retrieval_index import RetrievalIndex


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DEFAULT_DATA, help="shared data folder (holidays/, ukbench/)")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "cbir-bench-features"),
                        help="feature cache folder")
    parser.add_argument("--shape", default="141x2", help="vocabulary shape BxL (default 141x2: 19,881 words)")
    parser.add_argument("--methods", default="sift-he,sift-he-sv,sift-he-sv-qe",
                        help="pipelines; NAME:assignments=K:threshold=T:burstiness=0 changes options")
    parser.add_argument("--contrast", type=float, help="SIFT contrast threshold for every pipeline "
                        "(default: the pipelines' own, 0.005)")
    parser.add_argument("--jobs", type=int, default=2, help="extraction threads")
    parser.add_argument("--name", default="hamming", help="result file name under benchmarks/results")
    return parser.parse_args()


def variant(spec: str, contrast: float | None = None):
    """``sift-he:assignments=1:threshold=20`` -> (that pipeline, with the SIFT contrast threshold
    if given; its search options with those changes)."""
    name, *changes = spec.split(":")
    pipeline = get_pipeline(name)
    if contrast is not None:
        sift = dataclasses.replace(pipeline.build.sift, contrast_threshold=contrast)
        pipeline = dataclasses.replace(pipeline, build=dataclasses.replace(pipeline.build, sift=sift))
    options = pipeline.search
    for change in changes:
        key, value = change.split("=")
        if key == "assignments":
            options = dataclasses.replace(options, query_assignments=int(value))
        else:
            kind = type(getattr(options.hamming, key))
            options = dataclasses.replace(options, hamming=dataclasses.replace(
                options.hamming, **{key: kind(int(value)) if kind is bool else kind(value)}))
    return pipeline, options


def main():
    args = parse_args()
    datasets = benchmark_datasets(args.data)
    base, _ = variant("sift-he", args.contrast)
    descriptors = np.concatenate([local_descriptors(d.database_paths, base, args.cache, args.jobs, False)[0]
                                  for d in datasets.values()])
    b, depth = (int(v) for v in args.shape.split("x"))
    start = time.perf_counter()
    vocabulary = VocabularyTree.train(descriptors, VocabularyConfig(branching=b, depth=depth, seed=0), verbose=False)
    vocab_s = time.perf_counter() - start
    start = time.perf_counter()
    hamming = HammingEmbedding.learn(descriptors, vocabulary.quantize(descriptors, beam=base.build.beam),
                                     vocabulary.n_words, base.build.hamming_seed)
    he_s = time.perf_counter() - start
    lines = [f"Vocabulary {vocabulary.n_words} words ({b}^{depth}, {vocab_s:.0f} s) and 64-bit Hamming embedding "
             f"({he_s:.0f} s), both learned on Holidays + UKBench ({len(descriptors)} RootSIFT descriptors, "
             f"SIFT contrast threshold {base.build.sift.contrast_threshold}). "
             f"A posting is an int32 image slot + a uint64 signature: 12 bytes.", "",
             "| pipeline | Holidays-811 mAP | UKBench-1000 N-S | query ms median (H / U) | query ms p95 (H / U) |",
             "|---|---|---|---|---|"]
    indexes = {}
    for spec in args.methods.split(","):
        pipeline, options = variant(spec, args.contrast)
        lines.append(shared_index_row(spec, pipeline, options, datasets, indexes,
                                      lambda p: RetrievalIndex(p, vocabulary, hamming=hamming, cache_dir=args.cache),
                                      args.jobs))
        print(lines[-1], flush=True)
    print(f"written to {write_result(args.name, chr(10).join(lines))}")


if __name__ == "__main__":
    main()
