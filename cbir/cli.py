"""``cbir``: train vocabularies, build and query indexes, evaluate on benchmarks.

Every subcommand has ``--help``. Image arguments may be files, folders (searched
recursively for image files) or ``@list.txt`` files with one path per line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from bovw.extraction import ExtractionReport
from bovw.images import ImageReadError
from bovw.vocabulary import VocabularyConfig
from cbir.evaluate import index_dataset, run_queries
from cbir.pipelines import ALL_PIPELINES, get_pipeline
from cbir.retrieval_index import (RetrievalIndex, learn_hamming, learn_local_whitening, load_index, load_vocabulary,
                                  save_vocabulary, train_vocabulary)
from cnn.global_index import GlobalIndex, learn_whitening
from cnn.pipelines import GlobalPipeline
from index.datasets import load_dataset
from index.persistence import IndexFormatError, MANIFEST

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")


def default_cache_dir() -> str:
    """``$CBIR_CACHE`` or ``$XDG_CACHE_HOME/cbir/features`` (``~/.cache/cbir/features``)."""
    base = os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
    return os.environ.get("CBIR_CACHE", os.path.join(base, "cbir", "features"))


def expand_images(arguments: list[str]) -> list[str]:
    """Files, folders (recursive, image extensions only) and @list files -> image paths.

    Paths that do not exist are kept, so that they are reported as skipped.
    """
    paths = []
    for argument in arguments:
        if argument.startswith("@"):
            with open(argument[1:], encoding="utf-8") as handle:
                paths += [line.strip() for line in handle if line.strip()]
        elif os.path.isdir(argument):
            for folder, _, files in sorted(os.walk(argument)):
                paths += [os.path.join(folder, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
        else:
            paths.append(argument)
    return paths


def _refuse_overwrite(directory: str, force: bool) -> None:
    if os.path.exists(os.path.join(directory, MANIFEST)) and not force:
        raise SystemExit(f"cbir: {directory}: already holds a saved index or vocabulary; "
                         f"use --force to overwrite it")


def _print_report(report: ExtractionReport) -> None:
    print(report.summary(), file=sys.stderr)


def cmd_vocab(args) -> None:
    pipeline = get_pipeline(args.method)
    if isinstance(pipeline, GlobalPipeline) or pipeline.local_whitening_dim is not None:
        raise SystemExit(f"cbir: {pipeline.name} has no separately trained vocabulary; give --train-root "
                         f"to cbir index or cbir eval instead")
    _refuse_overwrite(args.output, args.force)
    config = VocabularyConfig(branching=args.branching, depth=args.depth, niter=args.niter,
                              seed=args.seed, max_descriptors=args.max_descriptors)
    vocabulary, report = train_vocabulary(expand_images(args.images), pipeline, config, args.cache, args.jobs)
    _print_report(report)
    save_vocabulary(vocabulary, args.output)
    print(f"saved a {vocabulary.n_words}-word vocabulary ({config.branching}^{config.depth}) to {args.output}")


def cmd_index(args) -> None:
    exists = os.path.exists(os.path.join(args.output, MANIFEST))
    if exists and not (args.add or args.force):
        raise SystemExit(f"cbir: {args.output}: an index is already there; use --add to extend it "
                         f"or --force to replace it")
    if exists and args.add:
        index = load_index(args.output, cache_dir=args.cache)
    else:
        index = _new_index(args, get_pipeline(args.method))
    paths = expand_images(args.images)
    report = index.add_images(paths, n_jobs=args.jobs)
    index.save(args.output)
    _print_report(report)
    print(f"index {args.output}: {len(index)} images")


def cmd_query(args) -> None:
    index = load_index(args.index, cache_dir=args.cache, verify=not args.mmap, mmap=args.mmap)
    bbox = tuple(float(v) for v in args.bbox.split(",")) if args.bbox else None
    try:
        results = index.search(args.image, top_k=args.top_k, bbox=bbox, n_jobs=args.n_jobs)
    except ImageReadError as exc:
        raise SystemExit(f"cbir: {exc}") from None
    if args.draw:
        if not isinstance(index, RetrievalIndex):
            raise SystemExit("cbir: --draw needs a local-feature index (matches are drawn)")
        _draw(index, args, results, bbox)
    if args.json:
        print(json.dumps([{"name": r.name, "score": r.score, "inliers": r.inliers,
                           "homography": None if r.homography is None else r.homography.tolist()}
                          for r in results]))
        return
    for rank, result in enumerate(results, 1):
        verified = f"  {result.inliers} inliers" if result.inliers is not None else ""
        print(f"{rank:4d}  {result.score:.4f}  {result.name}{verified}")


def _draw(index: RetrievalIndex, args, results, bbox) -> None:
    """Write the query beside its top results, inlier matches drawn, as a PNG."""
    import cv2
    from cbir.visualize import draw_results
    features = index.query_features(args.image, bbox)
    query_image = index.query_image(args.image, bbox)
    if query_image.ndim == 2:
        query_image = np.repeat(query_image[..., None], 3, axis=2)
    shown = results[:args.draw_top]
    paths = []
    for result in shown:
        candidate = os.path.join(args.image_root, result.name) if args.image_root else result.name
        paths.append(candidate if os.path.isfile(candidate) else None)
    picture = draw_results(query_image, features, shown, paths,
                           [index.images.features(r.slot)[0] for r in shown], index.pipeline.image_options)
    cv2.imwrite(args.draw, cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    print(f"wrote {args.draw}", file=sys.stderr)


def _new_index(args, pipeline):
    """An empty index for ``pipeline``: a vocabulary (--vocab, or trained on --train-root)
    for local features, a whitening learned on --whiten-root for CNN global descriptors."""
    if isinstance(pipeline, GlobalPipeline):
        whitening = None
        if args.whiten_root:
            paths = expand_images(args.whiten_root)
            print(f"learning the {pipeline.name} whitening on {len(paths)} images", file=sys.stderr)
            whitening, _ = learn_whitening(paths, pipeline, args.cache)
        else:
            print("cbir: no --whiten-root given: descriptors are L2-normalised, not whitened", file=sys.stderr)
        return GlobalIndex(pipeline, whitening, args.cache)
    whitening = None
    if pipeline.local_whitening_dim is not None:
        roots = args.whiten_root or args.train_root
        if not roots:
            raise SystemExit(f"cbir: pipeline {pipeline.name} learns a descriptor whitening: give --train-root "
                             f"(or --whiten-root) images, ideally not the ones indexed")
        whitening, _ = learn_local_whitening(expand_images(roots), pipeline, args.cache, args.jobs)
    if args.vocab:
        if whitening is not None:
            raise SystemExit(f"cbir: pipeline {pipeline.name} trains its vocabulary on whitened descriptors: "
                             f"use --train-root instead of --vocab")
        vocabulary = load_vocabulary(args.vocab)
    elif args.train_root:
        config = VocabularyConfig(branching=args.branching or pipeline.vocabulary.branching,
                                  depth=args.depth or pipeline.vocabulary.depth, seed=args.seed)
        train_paths = expand_images(args.train_root)
        print(f"training a {config.n_words}-word vocabulary on {len(train_paths)} images", file=sys.stderr)
        vocabulary, _ = train_vocabulary(train_paths, pipeline, config, args.cache, args.jobs, whitening=whitening)
    else:
        raise SystemExit("cbir: --vocab or --train-root is required for a new index")
    hamming = None
    if pipeline.hamming is not None:
        if not args.train_root:
            raise SystemExit(f"cbir: pipeline {pipeline.name} learns a Hamming embedding: give --train-root images")
        hamming, _ = learn_hamming(expand_images(args.train_root), pipeline, vocabulary, args.cache, args.jobs,
                                   whitening=whitening)
    return RetrievalIndex(vocabulary, pipeline, cache_dir=args.cache, whitening=whitening, hamming=hamming)


def cmd_eval(args) -> None:
    dataset = load_dataset(args.dataset, args.root)
    pipeline = get_pipeline(args.method)
    if args.index and os.path.exists(os.path.join(args.index, MANIFEST)):
        index = load_index(args.index, cache_dir=args.cache)
    else:
        if not (args.vocab or args.train_root or isinstance(pipeline, GlobalPipeline)):
            args.train_root = [args.root]
        index = _new_index(args, pipeline)
    report = index_dataset(index, dataset, n_jobs=args.jobs)
    if report.skipped:
        _print_report(report)
    if args.index:
        index.save(args.index)
    result = run_queries(index, dataset)
    if args.rankings:
        result.write_rankings(dataset, args.rankings)
    scores = "  ".join(f"{k} {v:.4f}" for k, v in result.scores.items())
    print(f"{dataset.name} ({len(dataset.database)} images, {len(dataset.queries)} queries)  "
          f"{pipeline.name}  {scores}  query ms median {np.median(result.query_ms):.2f}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cbir", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    methods = ", ".join(f"{p.name} ({p.description})" for p in ALL_PIPELINES.values())

    def vocabulary_training(p):
        p.add_argument("--train-root", nargs="+",
                       help="images/folders to train a vocabulary (and a BLCF whitening) on; "
                            "eval's default: --root")
        p.add_argument("--whiten-root", nargs="+",
                       help="images to learn a CNN pipeline's whitening on (use other images than the indexed)")
        p.add_argument("--branching", type=int, help="vocabulary branching when training (default: the pipeline's)")
        p.add_argument("--depth", type=int, help="vocabulary depth when training (default: the pipeline's)")
        p.add_argument("--seed", type=int, default=0, help="vocabulary seed when training")

    def common(p, method=True):
        if method:
            p.add_argument("--method", default="sift-bow", help=f"pipeline name: {methods}")
        p.add_argument("--cache", default=default_cache_dir(),
                       help="feature cache folder (default: %(default)s); '' disables it")
        p.add_argument("--jobs", type=int, default=1, help="extraction threads (-1: all cores)")

    p = sub.add_parser("vocab", help="train a vocabulary tree from images")
    p.add_argument("images", nargs="+", help="image files, folders, or @list.txt")
    p.add_argument("-o", "--output", required=True, help="vocabulary directory to write")
    p.add_argument("--branching", type=int, default=10, help="children per node, b (default 10)")
    p.add_argument("--depth", type=int, default=5, help="levels, L; words = b^L (default 5)")
    p.add_argument("--niter", type=int, default=20, help="k-means iterations per node")
    p.add_argument("--max-descriptors", type=int, default=0,
                   help="sample at most this many training descriptors (0: all)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--force", action="store_true", help="overwrite an existing vocabulary")
    common(p)
    p.set_defaults(func=cmd_vocab)

    p = sub.add_parser("index", help="build an index, or extend one with --add")
    p.add_argument("images", nargs="+", help="image files, folders, or @list.txt")
    p.add_argument("-o", "--output", required=True, help="index directory")
    p.add_argument("--vocab", help="vocabulary directory (for a new local-feature index)")
    vocabulary_training(p)
    p.add_argument("--add", action="store_true", help="add the images to the existing index")
    p.add_argument("--force", action="store_true", help="replace an existing index")
    common(p)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("query", help="search an index with an image")
    p.add_argument("image", help="query image file")
    p.add_argument("--index", required=True, help="index directory")
    p.add_argument("--top-k", type=int, default=10, help="results to print (default 10)")
    p.add_argument("--bbox", help="query region x0,y0,x1,y1 in pixels")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--draw", metavar="PNG", help="write a picture of the query beside its top results, "
                                                  "inlier matches drawn")
    p.add_argument("--draw-top", type=int, default=5, help="results in the picture (default 5)")
    p.add_argument("--image-root", help="folder the indexed image names are relative to (for --draw)")
    p.add_argument("--n-jobs", type=int, default=1, help="threads for spatial verification")
    p.add_argument("--mmap", action="store_true", help="memory-map the index instead of reading it, without "
                   "checksums (fast start for a large index; shapes and bounds are still checked)")
    common(p, method=False)
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("eval", help="score a method on a benchmark")
    p.add_argument("--dataset", required=True, choices=["holidays", "ukbench", "revisitop"])
    p.add_argument("--root", required=True, help="dataset folder")
    p.add_argument("--vocab", help="vocabulary directory; without it one is trained (on --train-root)")
    vocabulary_training(p)
    p.add_argument("--index", help="index directory to reuse, or to save the built index in")
    p.add_argument("--rankings", help="write one JSON line per query with its full ranking")
    common(p)
    p.set_defaults(func=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "cache", None) == "":
        args.cache = None
    try:
        args.func(args)
    except (IndexFormatError, FileNotFoundError, KeyError, ValueError) as exc:
        print(f"cbir: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
