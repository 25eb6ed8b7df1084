"""BLCF (bags of local convolutional features) on Holidays-811 and UKBench-1000.

For each evaluated set, the local-descriptor whitening and the vocabulary are
learned on the *other* set; ``blcf`` (global search over the inverted file) and
``blcf-ls`` (local search re-ranking of the top 100) share the same index;
``blcf-he`` (Hamming embedding) and ``blcf-asmk`` (ASMK*) use the same whitening
and vocabulary, their signatures learned on the other set too.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time

import numpy as np

from benchmarks.common import DEFAULT_DATA, OTHER, benchmark_datasets, write_result
from bovw.extraction import iter_features
from bovw.vocabulary import VocabularyConfig
from cbir.build import asmk_from, hamming_from, learn_local_whitening, local_descriptors, train_vocabulary
from cbir.evaluate import index_dataset, run_queries
from cbir.learning import conv_lw, local_training_rows, restrict
from cbir.mining import DEFAULT_MIN_INLIERS, MinedPairs
from cbir.pipelines import get_pipeline
from cbir.retrieval_index import RetrievalIndex, local_feature_cache, read_local_features
from cnn.options import LOCAL_LAYERS


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DEFAULT_DATA, help="shared data folder (holidays/, ukbench/)")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "cbir-bench-features"),
                        help="feature cache folder")
    parser.add_argument("--shape", help="vocabulary shape BxL (default: the pipeline's, 158x2)")
    parser.add_argument("--assignments", type=int, help="words per query position (default: the pipeline's, 3)")
    parser.add_argument("--whitening-dim", type=int, help="PCA-whitening dimensions (default: the pipeline's, 256)")
    parser.add_argument("--scales", help="image scales of the conv features, e.g. 1.414,1,0.707 (default: 1; "
                                         "local search needs one scale: leave blcf-ls out of --variants)")
    parser.add_argument("--max-features", type=int, help="keep the positions of largest activation norm, this many "
                                                         "per image (HOW's attention; default: all)")
    parser.add_argument("--layer", choices=LOCAL_LAYERS, help="conv map whose positions are the features "
                                                             "(default: the pipeline's, block11-expand)")
    parser.add_argument("--local-lw", metavar="MINED", help="learned whitening of the conv features instead of PCA "
                        "whitening: from the mutually nearest positions of the other set's verified pairs, read "
                        "from MINED/<set> (cbir.mining.MinedPairs saves, e.g. MINED/ukbench for Holidays)")
    parser.add_argument("--variants", default="blcf,blcf-ls,blcf-he,blcf-asmk", help="pipelines (comma-separated)")
    parser.add_argument("--jobs", type=int, default=2, help="images processed in parallel")
    parser.add_argument("--name", default="blcf", help="result file name under benchmarks/results")
    return parser.parse_args()


def main():
    args = parse_args()
    datasets = benchmark_datasets(args.data)
    changes, search_changes = {}, {}
    if args.shape:
        b, depth = (int(v) for v in args.shape.split("x"))
        changes["vocabulary"] = VocabularyConfig(branching=b, depth=depth)
    if args.assignments:
        search_changes["query_assignments"] = args.assignments
    if args.whitening_dim:
        changes["local_whitening_dim"] = args.whitening_dim
    base = get_pipeline("blcf")
    conv = {"scales": tuple(float(s) for s in args.scales.split(","))} if args.scales else {}
    if args.max_features:
        conv["max_features"] = args.max_features
    if args.layer:
        conv["layer"] = args.layer
    if conv:
        changes["conv"] = dataclasses.replace(base.build.conv, **conv)
    blcf = dataclasses.replace(base, build=dataclasses.replace(base.build, **changes),
                               search=dataclasses.replace(base.search, **search_changes))
    variants = {name: dataclasses.replace(get_pipeline(name), search=dataclasses.replace(
        get_pipeline(name).search, **search_changes), build=dataclasses.replace(get_pipeline(name).build, **changes))
        for name in args.variants.split(",")}
    build = blcf.build
    for dataset in datasets.values():  # extract once, in parallel
        for _ in iter_features(dataset.database_paths, lambda path: read_local_features(build, path),
                               local_feature_cache(build, args.cache), n_jobs=args.jobs, verbose=False):
            pass
    stride, channels = LOCAL_LAYERS[build.conv.layer][2:]
    lines = [f"Local features: {build.conv.backbone.name} {build.conv.layer} ({channels}-d, stride {stride}) at image "
             f"scales {', '.join(f'{s:g}' for s in build.conv.scales)}"
             + (f" (the {build.conv.max_features} of largest activation norm kept per image)"
                if build.conv.max_features else "") + ", "
             f"{'Lw (mutually nearest positions of verified pairs)' if args.local_lw else 'PCA'}-whitened to "
             f"{build.local_whitening_dim} dims; vocabulary {build.vocabulary.n_words} words "
             f"({build.vocabulary.branching}^{build.vocabulary.depth}), {blcf.search.query_assignments} words per "
             f"query position; whitening and vocabulary learned on the other dataset.", "",
             "| pipeline | eval set | score | query ms median | query ms p95 | whitening + vocab s | "
             "inverted-file bytes per image | + image store |",
             "|---|---|---|---|---|---|---|---|"]
    for name, dataset in datasets.items():
        start = time.perf_counter()
        train = datasets[OTHER[name]].database_paths
        whitening = local_learned_whitening(train, blcf, os.path.join(args.local_lw, OTHER[name]), args) \
            if args.local_lw else learn_local_whitening(train, blcf, args.cache, progress=False)[0]
        vocabulary, _ = train_vocabulary(train, blcf, cache_dir=args.cache, progress=False, whitening=whitening)
        learn_s = time.perf_counter() - start
        signatures = signatures_learned(train, blcf, vocabulary, whitening, args)
        indexes = {}
        for variant_name, variant in variants.items():
            parts = {"hamming": signatures["hamming"]} if variant.build.hamming else \
                {"asmk": signatures["asmk"]} if variant.build.asmk else {}
            if variant.build not in indexes:
                indexes[variant.build] = RetrievalIndex(variant, vocabulary, whitening, cache_dir=args.cache, **parts)
                index_dataset(indexes[variant.build], dataset, progress=False)
            index = indexes[variant.build]
            result = run_queries(index, dataset, variant.search, progress=False)
            (metric, score), = result.scores.items()
            per_image = index.info()["bytes_per_image"]
            postings = sum(v for k, v in per_image.items() if k.startswith("inverted_file."))
            store = sum(v for k, v in per_image.items() if k.startswith("images."))
            lines.append(f"| {variant_name} | {name} | {metric} {score:.4f} | {np.median(result.query_ms):.1f} "
                         f"| {np.percentile(result.query_ms, 95):.1f} | {learn_s:.0f} | {postings:,.0f} | "
                         f"{store:,.0f} |")
            print(lines[-1], flush=True)
    print(f"written to {write_result(args.name, chr(10).join(lines))}")


def local_learned_whitening(train: list[str], blcf, mined_dir: str, args):
    """``cbir train --head blcf-lw``'s whitening of ``train``'s conv features (``cbir.learning.conv_lw``
    of the mutually nearest positions of each image pair verified with at
    least mining's default inliers in ``mined_dir``, images matched to ``train`` by file name)."""
    mined = MinedPairs.load(mined_dir).at_threshold(DEFAULT_MIN_INLIERS)
    by_name = {os.path.basename(path): path for path in train}
    rows, kept, _ = local_training_rows([by_name[os.path.basename(path)] for path in mined.images], args.cache,
                                        args.jobs, False, blcf)
    pairs, _ = restrict(mined.pairs, mined.components, kept)
    return conv_lw(rows, pairs, blcf)


def signatures_learned(train: list[str], blcf, vocabulary, whitening, args) -> dict:
    """The Hamming embedding and the ASMK* binarisation of BLCF's whitened conv features of ``train``."""
    descriptors, _ = local_descriptors(train, blcf, args.cache, args.jobs, progress=False)
    return {"hamming": hamming_from(descriptors, blcf, vocabulary, args.jobs, whitening),
            "asmk": asmk_from(descriptors, blcf, vocabulary, args.jobs, whitening)}


if __name__ == "__main__":
    main()
