"""ASMK* against Hamming embedding on the same vocabulary: Holidays-811 and UKBench-1000.

For each evaluated set, one 141^2-word vocabulary, one 64-bit Hamming embedding and
one ASMK* binarisation are learned on the OTHER set's RootSIFT descriptors (as
``cbir eval --train-root OTHER``); a ``sift-he`` index (one posting per feature) and a
``sift-asmk`` index (one posting per (image, word)) of the evaluated set are built on
them and searched with and without spatial verification. Reports the scores, query
time (median, p95, and the ratio to ``sift-he`` in the same run), postings and bytes
per image.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile

import numpy as np

from benchmarks.common import DEFAULT_DATA, OTHER, benchmark_datasets, write_result
from bovw.hamming import HammingEmbedding
from bovw.vocabulary import VocabularyConfig, VocabularyTree
from cbir.build import local_descriptors
from cbir.evaluate import index_dataset, run_queries
from cbir.pipelines import get_pipeline
from cbir.retrieval_index import RetrievalIndex
from index.asmk import AsmkConfig, AsmkEmbedding

ASMK, ASMK_SV = get_pipeline("sift-asmk"), get_pipeline("sift-asmk-sv")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DEFAULT_DATA, help="shared data folder (holidays/, ukbench/)")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "cbir-bench-features"),
                        help="feature cache folder")
    parser.add_argument("--shape", default="141x2", help="vocabulary shape BxL (default 141x2: 19,881 words)")
    parser.add_argument("--alpha", type=float, default=AsmkConfig.alpha, help="ASMK* selectivity exponent")
    parser.add_argument("--tau", type=float, default=AsmkConfig.threshold, help="ASMK* similarity threshold")
    parser.add_argument("--verification-threshold", type=int, default=AsmkConfig.verification_threshold,
                        help="bits within which a shared word's aggregated signatures keep its correspondences")
    parser.add_argument("--sets", default="holidays,ukbench", help="evaluated sets")
    parser.add_argument("--jobs", type=int, default=2, help="extraction and quantization workers")
    parser.add_argument("--name", default="asmk", help="result file name under benchmarks/results")
    return parser.parse_args()


def learned_parts(paths, shape: str, cache: str, jobs: int):
    """(vocabulary, Hamming embedding, ASMK* binarisation) learned on the RootSIFT of ``paths``."""
    he = get_pipeline("sift-he")
    descriptors = local_descriptors(paths, he, cache, jobs, False)[0]
    branching, depth = (int(v) for v in shape.split("x"))
    vocabulary = VocabularyTree.train(descriptors, VocabularyConfig(branching=branching, depth=depth, seed=0),
                                      verbose=False)
    words = vocabulary.quantize(descriptors, beam=he.build.beam, n_jobs=jobs)
    return (vocabulary, HammingEmbedding.learn(descriptors, words, vocabulary.n_words, he.build.hamming_seed),
            AsmkEmbedding.learn(descriptors, words, vocabulary.centers[-1], he.build.hamming_seed))


def storage(index: RetrievalIndex) -> tuple[float, float, float]:
    """(postings per image, inverted-file bytes per image, image-store bytes per image)."""
    info = index.info()
    per_image = info["bytes_per_image"]
    return (info["postings"] / info["images"],
            sum(v for k, v in per_image.items() if k.startswith("inverted_file.")),
            sum(v for k, v in per_image.items() if k.startswith("images.")))


def main():
    args = parse_args()
    datasets = benchmark_datasets(args.data)
    config = AsmkConfig(args.alpha, args.tau, args.verification_threshold)
    lines = ["| set | pipeline | score | query ms median (x sift-he) | p95 | postings / image | "
             "inverted-file bytes / image | + image store (verification) |", "|---|---|---|---|---|---|---|---|"]
    for name in args.sets.split(","):
        dataset = datasets[name]
        vocabulary, hamming, asmk = learned_parts(datasets[OTHER[name]].database_paths, args.shape, args.cache,
                                                  args.jobs)
        indexes = {"sift-he": RetrievalIndex("sift-he", vocabulary, hamming=hamming, cache_dir=args.cache),
                   "sift-asmk": RetrievalIndex(ASMK, vocabulary, cache_dir=args.cache, asmk=asmk)}
        for index in indexes.values():
            index_dataset(index, dataset, n_jobs=args.jobs, progress=False)
        base_ms = None
        for label, index_name, options in (("sift-he", "sift-he", None),
                                           ("sift-he-sv", "sift-he", "sift-he-sv"),
                                           ("sift-asmk", "sift-asmk", dataclasses.replace(ASMK.search, asmk=config)),
                                           ("sift-asmk-sv", "sift-asmk",
                                            dataclasses.replace(ASMK_SV.search, asmk=config))):
            index = indexes[index_name]
            result = run_queries(index, dataset, options, progress=False)
            (metric, score), = result.scores.items()
            median = float(np.median(result.query_ms))
            base_ms = base_ms or median
            postings, inverted_bytes, store_bytes = storage(index)
            lines.append(f"| {dataset.name} | {label} | {metric} {score:.4f} | {median:.1f} ({median / base_ms:.2f}) | "
                         f"{np.percentile(result.query_ms, 95):.1f} | {postings:.0f} | {inverted_bytes:.0f} | "
                         f"{store_bytes:.0f} |")
            print(lines[-1], flush=True)
    body = (f"Vocabulary {args.shape} (beam 3), 64-bit Hamming embedding and ASMK* binarisation (alpha "
            f"{config.alpha}, tau {config.threshold}; verification keeps a shared word's correspondences when its "
            f"aggregated signatures lie within {config.verification_threshold} bits) learned on the other set's "
            f"RootSIFT; query time includes quantization, signatures and aggregation, not extraction.\n\n"
            + "\n".join(lines))
    print(f"written to {write_result(args.name, body)}")


if __name__ == "__main__":
    main()
