"""``cbir``: train vocabularies, build, inspect and query indexes, evaluate on benchmarks.

Every subcommand has ``--help``. Image arguments may be files, folders (searched
recursively for image files) or ``@list.txt`` files with one path per line.

Exit codes: 0 success; 1 an error (the message names the file and the problem);
2 a usage error (bad or missing arguments); 130 interrupted (Ctrl-C).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys

from bovw.extraction import ExtractionReport
from bovw.images import ImageReadError
from cnn.options import LAST_BLOCK
from index.persistence import MANIFEST, IndexFormatError, read_manifest

#: ``cbir train``'s epochs, batch and learning rate of the head (cnn.training.TrainingConfig's defaults, without
#: importing torch), and the learning rate of tuned backbone blocks.
TRAIN_DEFAULTS = {"epochs": 10, "batch": 32, "lr": 1e-4}
TRAIN_DEFAULT_BACKBONE_LR = 1e-5
#: ``--head blcf-how``'s instead: its affine layer acts on every conv position, and the loss of the positions'
#: sum moves it less per step than a pooled head's (benchmarks/RESULTS.md, issue 16).
BLCF_HOW_DEFAULTS = {"epochs": 20, "batch": 16, "lr": 3e-3}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
logger = logging.getLogger("cbir")


class UsageError(Exception):
    """A command line that cannot be carried out as given (exit code 1, one line)."""


def default_cache_dir() -> str:
    """``$CBIR_CACHE`` or ``$XDG_CACHE_HOME/cbir/features`` (``~/.cache/cbir/features``)."""
    base = os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
    return os.environ.get("CBIR_CACHE", os.path.join(base, "cbir", "features"))


def expand_images(arguments: list[str]) -> list[str]:
    """Files, folders (recursive, image extensions only) and @list files -> image paths.

    A file or folder named on the command line that does not exist is a mistake (UsageError);
    paths listed in an @list file are kept even when missing, so that a build reports them as
    skipped and goes on.
    """
    paths = []
    for argument in map(str, arguments):
        if argument.startswith("@"):
            paths += read_list(argument[1:])
        elif os.path.isdir(argument):
            for folder, _, files in sorted(os.walk(argument)):
                paths += [os.path.join(folder, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
        elif os.path.exists(argument):
            paths.append(argument)
        else:
            raise UsageError(f"{argument}: no such file or folder")
    return paths


def _refuse_overwrite(directory: str, force: bool) -> None:
    if os.path.exists(os.path.join(directory, MANIFEST)) and not force:
        raise UsageError(f"{directory}: already holds a saved index or vocabulary; use --force to overwrite it")


def _print_report(report: ExtractionReport) -> None:
    print(report.summary(), file=sys.stderr)


def query_rotations(text: str) -> tuple[int, ...]:
    """``--rotations``: comma-separated angles -> a tuple (UsageError unless distinct angles of 0, 90, 180,
    270)."""
    from index.search_options import SearchOptions
    try:
        angles = tuple(int(angle) for angle in text.split(","))
    except ValueError:
        raise UsageError(f"--rotations: angles are whole degrees separated by commas (got {text!r})") from None
    try:
        return SearchOptions(query_rotations=angles).query_rotations
    except ValueError as exc:
        raise UsageError(f"--rotations: {exc}") from None


def search_options(index, args):
    """The index's search options, with the pipeline given by ``--search`` and each override applied."""
    from bovw.hamming import HammingConfig
    from index.search_options import DiffusionConfig, ExpansionConfig
    from index.spatial_verification import VerificationConfig
    options = index.search_options(args.search)
    changes = {}
    if args.assignments is not None:
        changes["query_assignments"] = args.assignments
    if args.verify is not None:
        changes["verification"] = dataclasses.replace(options.verification or VerificationConfig(),
                                                      top_k=args.verify) if args.verify else None
        if not args.verify:
            changes["expansion"] = None
    if args.expand is not None:
        changes["expansion"] = dataclasses.replace(options.expansion or ExpansionConfig(),
                                                   max_results=args.expand) if args.expand else None
    if args.expand_alpha is not None:
        if changes.get("expansion", options.expansion) is None:
            raise UsageError("--expand-alpha needs query expansion (--expand N)")
        changes["expansion"] = dataclasses.replace(changes.get("expansion", options.expansion), alpha=args.expand_alpha)
    if args.diffusion is not None:
        changes["diffusion"] = None if args.diffusion == "off" else dataclasses.replace(
            options.diffusion or DiffusionConfig(), regional=args.diffusion == "regional")
    diffusion = {name: value for name, value in (("alpha", args.diffusion_alpha), ("k", args.diffusion_k),
                                                  ("shortlist", args.diffusion_shortlist),
                                                  ("offline", args.diffusion_offline)) if value is not None}
    if diffusion:
        if changes.get("diffusion", options.diffusion) is None:
            raise UsageError("--diffusion-alpha/-k/-shortlist/-offline need diffusion (--diffusion global or regional)")
        changes["diffusion"] = dataclasses.replace(changes.get("diffusion", options.diffusion), **diffusion)
    if args.he_threshold is not None:
        changes["hamming"] = dataclasses.replace(options.hamming or HammingConfig(), threshold=args.he_threshold)
    asmk = {name: value for name, value in (("alpha", args.asmk_alpha), ("threshold", args.asmk_threshold))
            if value is not None}
    if asmk:
        if options.asmk is None:
            raise UsageError("--asmk-alpha/--asmk-threshold need an ASMK* index (sift-asmk, sift-asmk-sv, blcf-asmk)")
        changes["asmk"] = dataclasses.replace(options.asmk, **asmk)
    if args.window_search is not None:
        changes["window_search"] = args.window_search
    if args.region_rerank is not None:
        changes["region_rerank"] = args.region_rerank
    if args.rotations is not None:
        changes["query_rotations"] = query_rotations(args.rotations)
    return index.search_options(dataclasses.replace(options, **changes))


def cmd_vocab(args) -> None:
    from cbir.build import train_vocabulary
    from cbir.pipelines import get_pipeline
    from cbir.retrieval_index import save_vocabulary
    pipeline = get_pipeline(args.method)
    if pipeline.kind != "local" or pipeline.build.local_whitening_dim is not None:
        raise UsageError(f"{pipeline.name} has no separately trained vocabulary; give --train-root "
                         f"to cbir index or cbir eval instead")
    _refuse_overwrite(args.output, args.force)
    config = vocabulary_config(pipeline, args, niter=args.niter, max_descriptors=args.max_descriptors)
    paths = expand_images(args.images)
    logger.info("training a %d-word vocabulary (%d^%d) for %s on %d images", config.n_words, config.branching,
                config.depth, pipeline.name, len(paths))
    if args.scheduler:
        from cbir.distributed import connect
        with connect(args.scheduler) as client:
            vocabulary, report = train_vocabulary(paths, pipeline, config, args.cache, args.jobs, client=client)
    else:
        vocabulary, report = train_vocabulary(paths, pipeline, config, args.cache, args.jobs)
    _print_report(report)
    save_vocabulary(vocabulary, args.output, pipeline)
    print(f"saved a {vocabulary.n_words}-word vocabulary ({config.branching}^{config.depth}) to {args.output}")


def vocabulary_config(pipeline, args, **settings):
    """The pipeline's vocabulary shape with the command line's --branching, --depth and --seed."""
    default = pipeline.build.vocabulary
    return dataclasses.replace(default, branching=args.branching or default.branching,
                               depth=args.depth or default.depth, seed=args.seed, **settings)


def _new_index(args, pipeline):
    """An empty index for ``pipeline`` from the command line's learned parts."""
    from cbir.build import build_index
    from cbir.pipelines import get_pipeline
    from cbir.retrieval_index import load_vocabulary_for
    local = get_pipeline(pipeline.search.fusion.local) if pipeline.kind == "fusion" else pipeline
    vocabulary = load_vocabulary_for(args.vocab, local) if getattr(args, "vocab", None) else None
    config = vocabulary_config(local, args) if local.kind == "local" else None
    return build_index(pipeline, vocabulary, expand_images(args.train_root) if args.train_root else None,
                       expand_images(args.whiten_root) if args.whiten_root else None, config, args.cache, args.jobs,
                       model=getattr(args, "model", None))


def common_root(paths: list[str]) -> str | None:
    """The deepest folder holding every existing file of ``paths`` (None when there is none)."""
    folders = [os.path.dirname(os.path.realpath(p)) for p in paths if os.path.isfile(p)]
    return os.path.commonpath(folders) if folders else None


def cmd_index(args) -> None:
    from cbir.pipelines import get_pipeline
    from cbir.searchable import load_index
    exists = os.path.exists(os.path.join(args.output, MANIFEST))
    if exists and not (args.add or args.force):
        raise UsageError(f"{args.output}: an index is already there; use --add to extend it or --force to replace it")
    if args.shards < 1 or args.partition_size < 1:
        raise UsageError("--shards and --partition-size must be at least 1")
    paths = expand_images(args.images)
    if not paths:
        raise UsageError(f"no image files found in {' '.join(args.images)}")
    if exists and args.add:
        index = load_index(args.output, cache_dir=args.cache)
        if args.method is not None and args.method != index.pipeline.name:
            raise UsageError(f"{args.output} was built with {index.pipeline.name}; --add keeps its method "
                             f"(drop --method {args.method})")
        if args.root is not None:
            raise UsageError(f"{args.output} names its images relative to {index.root}; --add keeps it (drop --root)")
        if args.shards > 1:
            raise UsageError(f"--shards splits a new index; --add keeps {args.output} as it is (drop --shards)")
    else:
        pipeline = get_pipeline(args.method or "sift-bow")
        if args.shards > 1:
            from cbir.sharded_index import UNSHARDABLE, shards_like_merged
            if not shards_like_merged(pipeline):
                raise UsageError(f"{pipeline.name} indexes do not shard ({UNSHARDABLE}); drop --shards")
        _warn_if_learned_on_indexed(args, paths)
        index = _new_index(args, pipeline)
        _warn_if_model_saw(args, paths)
        index.root = os.path.realpath(args.root) if args.root else common_root(paths)
    before = len(index)
    if args.scheduler:
        report = _index_on_cluster(args, index, paths)
    else:
        report = index.add_images(paths, n_jobs=args.jobs)
    added = len(paths) - len(report.skipped)
    _print_report(report)
    if not added:
        raise UsageError(f"no image could be added ({len(report.skipped)} skipped, see above); "
                         f"{args.output} was {'left as it was' if exists and args.add else 'not written'}")
    if not args.scheduler:
        if args.shards > 1 and not (exists and args.add):
            from cbir.sharded_index import split_index
            index = split_index(index, args.shards)
        index.save(args.output)
    shards = f" in {args.shards} shards" if args.shards > 1 and not (exists and args.add) else ""
    print(f"index {args.output}: {before + added} images ({added} added){shards}, names relative to {index.root}")


def _index_on_cluster(args, index, paths: list[str]) -> ExtractionReport:
    """``cbir index --scheduler``: index ``paths`` on the Dask cluster into ``args.output``."""
    from cbir.distributed import build_distributed, connect
    from cbir.retrieval_index import RetrievalIndex
    if not isinstance(index, RetrievalIndex) or (len(index) and args.shards > 1):
        raise UsageError("--scheduler builds a new local-feature index (sift-*, blcf*) or adds to a merged one; "
                         f"{args.output} cannot be built that way (drop --scheduler)")
    with connect(args.scheduler) as client:
        return build_distributed(index, paths, args.output, client, n_shards=args.shards,
                                 partition_size=args.partition_size)


def _warn_if_learned_on_indexed(args, paths: list[str]) -> None:
    """Warn when a whitening is to be learned on the images being indexed (it fits them: in a user
    trial, rmac P@10 fell from 0.94 unwhitened to 0.62 whitened on the 250 indexed photos), or
    when the trained model saw them (checked once the index is made: by then the model was accepted)."""
    if not args.whiten_root:
        return
    indexed = {os.path.realpath(p) for p in paths}
    shared = sum(os.path.realpath(p) in indexed for p in expand_images(args.whiten_root))
    if shared:
        logger.warning("the whitening is learned on %d of the indexed images: it fits them and can hurt "
                       "retrieval; learn it on other images", shared)


def _warn_if_model_saw(args, paths: list[str]) -> None:
    """Warn when the ``--model`` was trained on some of ``paths`` (scores on them are not held out)."""
    if not getattr(args, "model", None):
        return
    from cnn.learned_model import LearnedModel, trained_on
    seen = trained_on(LearnedModel.load(args.model), paths)
    if seen:
        logger.warning("the model %s was trained on %d of these %d images: results on them are not a held-out "
                       "score", args.model, seen, len(paths))


def cmd_train(args) -> None:
    import numpy as np
    from cbir.build import CONV_WHITENING_HEADS
    from cbir.learning import PIPELINE_OF_HEAD, train_model
    from cnn.training import TrainingConfig
    complete = os.path.join(args.out, MANIFEST)
    if os.path.exists(complete) and not args.force:
        raise UsageError(f"{args.out}: already holds a trained model; use --force to train it again")
    if args.force:
        import shutil
        for leftover in ("mining", "pairs"):
            shutil.rmtree(os.path.join(args.out, leftover), ignore_errors=True)
        if os.path.exists(os.path.join(args.out, "checkpoint.pt")):
            os.unlink(os.path.join(args.out, "checkpoint.pt"))
    paths = expand_images(args.images)
    if len(paths) < 2:
        raise UsageError(f"training needs images of several objects or places; found {len(paths)} image files "
                         f"in {' '.join(args.images)}")
    defaults = {name: default if getattr(args, name) is None else getattr(args, name)
                for name, default in (BLCF_HOW_DEFAULTS if args.head == "blcf-how" else TRAIN_DEFAULTS).items()}
    config = TrainingConfig(head=args.head, init=args.init, dim=args.dim, loss=args.loss, margin=args.margin,
                            negatives=args.negatives, hard_negatives=not args.random_negatives,
                            hard_positives=args.hard_positives, **defaults,
                            seed=args.seed, max_tuples=args.max_tuples, from_block=args.from_block,
                            backbone_lr=args.backbone_lr, lr_decay=args.lr_decay)
    vocabulary = None
    if args.branching or args.depth:
        from bovw.vocabulary import VocabularyConfig
        default = VocabularyConfig(branching=141, depth=2)
        vocabulary = dataclasses.replace(default, branching=args.branching or default.branching,
                                         depth=args.depth or default.depth, seed=args.seed)
    run = train_model(paths, args.out, config, args.min_inliers, args.shortlist, args.cache, args.jobs, args.device,
                      vocabulary_config=vocabulary)
    if run.mined.skipped or run.report.skipped:
        for path, reason in run.mined.skipped.items():
            print(f"skipped {path}: {reason}", file=sys.stderr)
        if run.report.skipped:
            _print_report(run.report)
    if run.result is None:
        done = f"learned in closed form in {run.model.scores['training_seconds']:.0f} s"
    else:
        history = run.result.history
        speed = f", {np.mean([r.tuples_per_s for r in history]):.0f} tuples/s" if history else ""
        done = f"{len(history)} epochs, {run.result.tuples_seen} tuples{speed}, {run.result.seconds:.0f} s"
    tuned = "" if run.model.tuned is None else f" and backbone blocks {run.model.from_block}..{LAST_BLOCK}"
    use = f"--method {PIPELINE_OF_HEAD[args.head]} --model {args.out}"
    if args.head in CONV_WHITENING_HEADS:
        use = f"{use} (or blcf-asmk), and --train-root for the vocabulary and signatures"
    print(f"model {args.out}: {run.model.head} head{tuned}, {done}; trained on {run.model.data['images']} images, "
          f"{run.model.data['pairs']} verified pairs; use it with {use}")


def cmd_remove(args) -> None:
    from cbir.searchable import load_index
    index = load_index(args.index, cache_dir=args.cache)
    names = expand_names(args.names)
    known = [index.name_for(n) if n not in index and os.path.isfile(n) else n for n in names]
    index.remove(known)
    index.save(args.index)
    print(f"index {args.index}: removed {len(known)}, {len(index)} images left")


def expand_names(arguments: list[str]) -> list[str]:
    """Image names and @list files (one name per line) -> names."""
    return [name for argument in arguments
            for name in (read_list(argument[1:]) if argument.startswith("@") else [argument])]


def read_list(path: str) -> list[str]:
    """The non-empty lines of a list file, stripped."""
    with open(path, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip()]


def cmd_query(args) -> None:
    from cbir.searchable import load_index, parse_box
    index = load_index(args.index, cache_dir=args.cache, verify=args.checksums, mmap=not args.checksums)
    box = parse_box(args.box) if args.box else None
    options = search_options(index, args)
    turned = options.query_rotations != (0,)
    if turned and args.draw:
        raise UsageError("--draw shows the query as given: it does not combine with --rotations")
    queries = expand_images(args.images)
    if not queries:
        raise UsageError(f"no query image files found in {' '.join(args.images)}")
    output = open(args.output, "w", encoding="utf-8", newline="") if args.output else sys.stdout
    writer = ResultWriter(args.format, output, many=len(queries) > 1)
    failed = 0
    try:
        for query in queries:
            try:
                prepared = index.query_views(query, box, options.query_rotations) if turned \
                    else index.prepare_query(query, box, options)
                results = index.search(prepared, top_k=args.top_k + int(args.exclude_self), options=options,
                                       n_jobs=args.jobs)
            except ImageReadError as exc:
                if len(queries) == 1:
                    raise
                print(f"cbir: {exc}", file=sys.stderr)  # the other queries go on
                failed += 1
                continue
            if args.exclude_self:
                own = os.path.realpath(query)
                results = [r for r in results if os.path.realpath(index.path_of(r.name)) != own][:args.top_k]
            if args.draw:
                _draw(index, query, box, prepared, results, args, len(queries) > 1)
            writer.write(query, [(r, index.path_of(r.name)) for r in results])
    finally:
        if args.output:
            output.close()
    if failed == len(queries):
        raise UsageError("no query image could be read")
    if args.output:
        print(f"wrote {args.output}: {len(queries) - failed} queries", file=sys.stderr)


class ResultWriter:
    """Query results as a table, JSON lines, CSV, or a COLMAP/hloc pairs file (``query db`` per line).

    Args:
        fmt: ``table``, ``jsonl``, ``csv`` or ``pairs``.
        stream: where to write.
        many: several queries (the table gets a header line per query).
    """

    FIELDS = ("query", "rank", "name", "path", "score", "inliers", "homography")

    def __init__(self, fmt: str, stream, many: bool):
        import csv
        self.fmt, self.stream, self.many = fmt, stream, many
        self.csv = csv.writer(stream) if fmt == "csv" else None
        if self.csv:
            self.csv.writerow(self.FIELDS[:-1])

    def write(self, query: str, results: list) -> None:
        """Write one query's ranked ``(SearchResult, absolute path)`` pairs."""
        if self.fmt == "table" and self.many:
            print(f"# {query}", file=self.stream)
        for rank, (r, path) in enumerate(results, 1):
            if self.fmt == "jsonl":
                print(json.dumps({"query": query, "rank": rank, "name": r.name, "path": path, "score": r.score,
                                  "inliers": r.inliers,
                                  "homography": None if r.homography is None else r.homography.tolist()}),
                      file=self.stream)
            elif self.fmt == "csv":
                self.csv.writerow([query, rank, r.name, path, f"{r.score:.6f}", "" if r.inliers is None else r.inliers])
            elif self.fmt == "pairs":
                print(f"{query} {path}", file=self.stream)
            else:
                verified = f"  {r.inliers} inliers" if r.inliers is not None else ""
                print(f"{rank:4d}  {r.score:.4f}  {r.name}{verified}", file=self.stream)


def _draw(index, query, box, prepared, results, args, many: bool) -> None:
    """Write the query beside its top results, inlier matches drawn, as a PNG."""
    import cv2
    from cbir.visualize import draw_results
    if index.KIND != "local":
        raise UsageError("--draw needs a local-feature index (matches are drawn)")
    shown = results[:args.draw_top]
    paths = [index.path_of(r.name) for r in shown]
    owners = [index.owner(r.slot) for r in shown]
    picture = draw_results(index.extracted_query_image(query, box), prepared.keypoints, shown,
                           [p if os.path.isfile(p) else None for p in paths],
                           [owner.images.features(slot)[0] for owner, slot in owners],
                           index.pipeline.build.image_options)
    target = f"{os.path.splitext(args.draw)[0]}-{os.path.splitext(os.path.basename(query))[0]}.png" if many \
        else args.draw
    cv2.imwrite(target, cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    print(f"wrote {target}", file=sys.stderr)


def cmd_info(args) -> None:
    from cbir.retrieval_index import load_vocabulary
    from cbir.searchable import load_index
    manifest = read_manifest(args.path)
    if manifest.get("format") == "cbir-learned-model":
        from cnn.learned_model import LearnedModel
        model = LearnedModel.load(args.path)
        head = model.inference_head()
        facts = {"format": "cbir-learned-model", "head": model.head, "backbone": model.backbone,
                 "weights_version": model.weights_version, "model_id": model.model_id,
                 "gem_p": None if head.p is None else round(head.p, 4),
                 "dim": head.output_dim, "tuned_from_block": model.from_block, "settings": model.settings,
                 "data": {k: v for k, v in model.data.items() if k != "image_digests"},
                 "epochs": len(model.history), "scores": model.scores}
    elif manifest.get("format") == "cbir-vocabulary":
        vocabulary = load_vocabulary(args.path)
        facts = {"format": "cbir-vocabulary", "words": vocabulary.n_words, "branching": vocabulary.branching,
                 "depth": vocabulary.depth, "dim": vocabulary.dim}
    else:
        facts = load_index(args.path, verify=False, mmap=True).info()
    if args.json:
        print(json.dumps(facts, indent=1))
        return
    for key, value in facts.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for name, item in value.items():
                print(f"  {name}: {item:.1f}" if isinstance(item, float) else f"  {name}: {item}")
        else:
            print(f"{key}: {value}")


def parse_size(text: str) -> int:
    """``500M``, ``20G``, ``1.5T`` or plain bytes -> bytes (ValueError otherwise)."""
    units = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}
    text = text.strip().upper().removesuffix("B")
    try:
        return int(float(text[:-1]) * units[text[-1]]) if text and text[-1] in units else int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a size (e.g. 500M, 20G)") from None


def cmd_cache(args) -> None:
    from bovw.feature_cache import cache_info, clean_cache
    if not args.cache:
        raise UsageError("no cache folder (--cache '' disables the cache)")
    if args.action == "info":
        facts = cache_info(args.cache)
    else:
        if args.older_than is None and args.max_size is None:
            raise UsageError("cbir cache clean needs --older-than DAYS and/or --max-size SIZE")
        facts = clean_cache(args.cache, None if args.older_than is None else args.older_than * 86400,
                            None if args.max_size is None else parse_size(args.max_size))
    if args.json:
        print(json.dumps(facts, indent=1))
    elif args.action == "info":
        print(f"{facts['directory']}: {facts['entries']} images, {facts['bytes'] / 2 ** 20:.1f} MB")
        for key, part in facts["keys"].items():
            print(f"  {key}: {part['entries']} images, {part['bytes'] / 2 ** 20:.1f} MB")
    else:
        print(f"{args.cache}: removed {facts['removed']} images ({facts['removed_bytes'] / 2 ** 20:.1f} MB); "
              f"{facts['entries']} left ({facts['bytes'] / 2 ** 20:.1f} MB)")


def cmd_eval(args) -> None:
    import numpy as np
    from cbir.build import shipped_whitening
    from cbir.evaluate import index_dataset, run_queries
    from cbir.pipelines import get_pipeline
    from cbir.searchable import load_index
    from index.datasets import load_dataset
    dataset = load_dataset(args.dataset, args.root)
    pipeline = get_pipeline(args.method)
    dense = get_pipeline(pipeline.search.fusion.dense) if pipeline.kind == "fusion" else pipeline
    if dense.kind == "global" and not args.whiten_root and args.dataset in ("holidays", "ukbench") \
            and shipped_whitening(dense) is not None:
        logger.warning("without --whiten-root, %s uses the shipped whitening, learned on Holidays and UKBench "
                       "images: not an honest score on %s", pipeline.name, args.dataset)
    if args.index and os.path.exists(os.path.join(args.index, MANIFEST)):
        index = load_index(args.index, cache_dir=args.cache)
    else:
        if pipeline.kind != "global" and not (args.vocab or args.train_root):
            logger.info("no --vocab or --train-root: training on the evaluated images (--root)")
            args.train_root = [args.root]
        index = _new_index(args, pipeline)
        _warn_if_model_saw(args, dataset.database_paths)
    report = index_dataset(index, dataset, n_jobs=args.jobs)
    if report.skipped:
        _print_report(report)
    if args.index:
        index.save(args.index)
    if args.search is None and index.serves(pipeline):
        args.search = pipeline.name
    result = run_queries(index, dataset, search_options(index, args))
    if args.rankings:
        result.write_rankings(dataset, args.rankings)
    scores = "  ".join(f"{k} {v:.4f}" for k, v in result.scores.items())
    print(f"{dataset.name} ({len(dataset.database)} images, {len(dataset.queries)} queries)  "
          f"{args.search or index.pipeline.name}  {scores}  query ms median {np.median(result.query_ms):.2f}")


def cmd_compare(args) -> None:
    from cbir.comparison import run_method, write_report
    from cbir.searchable import load_index
    from index.datasets import load_dataset
    if len(args.run) != 2:
        raise UsageError(f"compare takes two --run INDEX[:PIPELINE] (got {len(args.run)})")
    dataset = load_dataset(args.dataset, args.root)
    runs = []
    for spec in args.run:
        directory, sep, pipeline = spec.rpartition(":")
        if not sep:
            directory, pipeline = spec, ""
        index = load_index(directory, cache_dir=args.cache, verify=False, mmap=True)
        missing = [n for n in dataset.database if n not in index]
        if missing:
            raise UsageError(f"{directory} lacks {len(missing)} of the {dataset.name} images (e.g. {missing[0]}); "
                             f"build it with cbir eval --dataset {args.dataset} --index {directory}")
        label = f"{os.path.basename(os.path.normpath(directory))}:{pipeline or index.pipeline.name}"
        runs.append(run_method(label, index, dataset, pipeline or None))
        print(f"{label}: {runs[-1].result.scores}", file=sys.stderr)
    path = write_report(args.output, dataset, *runs, lambda name: os.path.join(dataset.root, name), args.listed,
                        args.top)
    print(path)


def cmd_serve(args) -> None:
    import socket
    from cbir.server.app import serve
    if not 0 < args.port < 65536:
        raise UsageError(f"--port must lie in 1..65535 (got {args.port})")
    if args.jobs == 0:
        raise UsageError("--jobs must be a positive count or -1 (all cores)")
    max_upload = parse_size(args.max_upload)
    if max_upload <= 0:
        raise UsageError(f"--max-upload must be positive (got {args.max_upload})")
    try:  # refuse a busy port or an unknown host before loading anything
        with socket.create_server((args.host, args.port)):
            pass
    except OSError as exc:
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    serve(args.index, host=args.host, port=args.port, benchmarks=args.benchmark or [], cache_dir=args.cache,
          max_upload_bytes=max_upload, n_jobs=args.jobs, verify=args.checksums)


def build_parser() -> argparse.ArgumentParser:
    from cbir.pipelines import PIPELINES
    parser = argparse.ArgumentParser(prog="cbir", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    methods = ", ".join(f"{p.name} ({p.description})" for p in PIPELINES.values())

    def learned_parts(p):
        p.add_argument("--train-root", nargs="+",
                       help="images/folders to train a vocabulary, Hamming embedding (and a BLCF whitening) on; "
                            "eval's default: --root")
        p.add_argument("--whiten-root", nargs="+",
                       help="images to learn a CNN pipeline's whitening on, never the indexed ones (default: the "
                            "whitening shipped for rmac, learned on public benchmark images; none for the others)")
        p.add_argument("--branching", type=int, help="vocabulary branching when training (default: the pipeline's)")
        p.add_argument("--depth", type=int, help="vocabulary depth when training (default: the pipeline's)")
        p.add_argument("--seed", type=int, default=0, help="vocabulary seed when training")
        p.add_argument("--model", help="trained model directory (cbir train) for pipelines with a learned head "
                                       "(gem-ft); its FC layer replaces the whitening. For blcf-he and blcf-asmk, a "
                                       "blcf-lw model: its whitening of the conv features replaces the PCA "
                                       "whitening learned on --train-root")

    def search_settings(p):
        g = p.add_argument_group("search options (default: the index's pipeline)")
        g.add_argument("--search", metavar="PIPELINE",
                       help="use the search options of another pipeline built like the index "
                            "(e.g. sift-sv-qe on a sift-bow index)")
        g.add_argument("--assignments", type=int, help="visual words per query descriptor")
        g.add_argument("--verify", type=int, metavar="N", help="spatially verify the top N (0: off)")
        g.add_argument("--expand", type=int, metavar="N", help="expand the query with up to N verified results (0: off)")
        g.add_argument("--he-threshold", type=int, help="Hamming distance threshold (of 64 bits)")
        g.add_argument("--asmk-alpha", type=float, metavar="A",
                       help="ASMK* selectivity exponent: a shared word adds sign(u)|u|^A (u: signature similarity)")
        g.add_argument("--asmk-threshold", type=float, metavar="T",
                       help="ASMK* similarity threshold in [-1, 1]: below it a shared word adds 0 (-1: none)")
        g.add_argument("--window-search", type=int, metavar="N", help="BLCF local search over the top N (0: off)")
        g.add_argument("--region-rerank", type=int, metavar="N", help="R-MAC region re-ranking of the top N (0: off)")
        g.add_argument("--rotations", metavar="A,B,..",
                       help="also search the query turned by these angles (degrees counter-clockwise, of 0, 90, "
                            "180, 270; e.g. 0,90,270 for photos shot sideways), each image scored by its best one")
        g.add_argument("--expand-alpha", type=float, metavar="A",
                       help="query expansion weights: similarity^A (alpha-QE; 0: average)")
        g.add_argument("--diffusion", choices=("off", "global", "regional"),
                       help="CNN indexes: diffusion on the collection's kNN graph of images or of their "
                            "R-MAC regions (rmac-rr indexes)")
        g.add_argument("--diffusion-alpha", type=float, metavar="A", help="diffusion strength in (0, 1)")
        g.add_argument("--diffusion-k", type=int, metavar="K", help="neighbours per node of the diffusion graph")
        g.add_argument("--diffusion-shortlist", type=int, metavar="T",
                       help="diffuse over the top T by descriptor similarity only (0: the whole graph)")
        g.add_argument("--diffusion-offline", type=int, metavar="L",
                       help="answer from precomputed diffusion rows (each node's top L; computed at the first "
                            "such search, ~n solves, saved with the index; 0: solve per query)")

    def common(p):
        p.add_argument("--cache", default=default_cache_dir(),
                       help="feature cache folder (default: %(default)s; $CBIR_CACHE sets it); '' disables it")
        p.add_argument("--jobs", type=int, default=-1,
                       help="extraction workers and threads (default -1: all cores)")

    p = sub.add_parser("vocab", help="train a vocabulary tree from images")
    p.add_argument("images", nargs="+", help="image files, folders, or @list.txt")
    p.add_argument("-o", "--output", required=True, help="vocabulary directory to write")
    p.add_argument("--method", default="sift-bow", help=f"pipeline whose features and vocabulary shape to use: {methods}")
    p.add_argument("--branching", type=int, help="children per node, b (default: the pipeline's)")
    p.add_argument("--depth", type=int, help="levels, L; words = b^L (default: the pipeline's)")
    p.add_argument("--niter", type=int, default=20, help="k-means iterations per node")
    p.add_argument("--max-descriptors", type=int, default=0,
                   help="sample at most this many training descriptors (0: all)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--force", action="store_true", help="overwrite an existing vocabulary")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="run the per-node k-means on a Dask cluster: its scheduler's address (tcp://host:8786), a "
                        "scheduler file, or local[:N] for N worker processes on this machine (same tree as without)")
    common(p)
    p.set_defaults(func=cmd_vocab)

    p = sub.add_parser("train", help="mine verified pairs in unlabelled photos and train a descriptor "
                                     "(gem-ft, netvlad-ft, rmac-lw, blcf-lw, blcf-how)",
                       description="Mine: every image queries the others with sift-he-sv; pairs with enough "
                                   "homography inliers are positives, their connected components the objects. "
                                   "Train (--head gem-fc, for gem-ft): GeM with a learnable p and an FC layer "
                                   "initialised from learned whitening, on the cached conv maps, with hard negatives "
                                   "re-mined every epoch (--from-block N: with the backbone's blocks N..15 and head "
                                   "conv, on their inputs computed once; --head netvlad, for netvlad-ft: NetVLAD "
                                   "with 16 "
                                   "clusters instead of GeM). Or learn (--head rmac-lw, for rmac-lw): a whitening of "
                                   "multi-scale R-MAC regions from the verified pairs, in closed form (the training "
                                   "options do not apply); --head blcf-lw the same of BLCF's conv features, for "
                                   "blcf-he and blcf-asmk; --head blcf-how that whitening trained further (HOW's "
                                   "training: the sum of an image's whitened positions is its descriptor in the "
                                   "loss). Resumable: run the same command again after an "
                                   "interruption. Train on other photos than the ones you will search.")
    p.add_argument("--images", nargs="+", required=True, help="training image files, folders, or @list.txt")
    p.add_argument("--out", required=True, help="model directory to write (also holds the work of an interrupted run)")
    p.add_argument("--head", choices=["gem-fc", "netvlad", "rmac-lw", "blcf-lw", "blcf-how"], default="gem-fc",
                   help="what to learn: gem-fc (trained GeM + FC, for --method gem-ft; default), netvlad "
                        "(trained NetVLAD + FC, for --method netvlad-ft), rmac-lw "
                        "(regional learned whitening of multi-scale R-MAC, for --method rmac-lw), blcf-lw "
                        "(learned whitening of the conv features of the mutually nearest positions of verified "
                        "pairs, for --method blcf-he or blcf-asmk) or blcf-how (that whitening, then trained with "
                        "the tuple loss on the sum of each image's whitened positions; same methods)")
    p.add_argument("--epochs", type=int, help=f"passes over the pairs (default {TRAIN_DEFAULTS['epochs']}, blcf-how "
                                              f"{BLCF_HOW_DEFAULTS['epochs']}; 0: learned whitening only)")
    p.add_argument("--loss", choices=["contrastive", "triplet"], default="contrastive", help="tuple loss")
    p.add_argument("--margin", type=float, help="loss margin (default: 0.85 contrastive, 0.1 triplet)")
    p.add_argument("--negatives", type=int, default=5, help="hard negatives per tuple (default 5)")
    p.add_argument("--random-negatives", action="store_true", help="random negatives instead of hard ones")
    p.add_argument("--hard-positives", action="store_true",
                   help="one tuple per image with its farthest verified partner instead of every pair")
    p.add_argument("--init", choices=["lw", "pca"], default="lw",
                   help="FC initialisation: learned whitening from the pairs (default) or PCA whitening")
    p.add_argument("--dim", type=int, default=512, help="descriptor dimensions (default 512; blcf-lw and blcf-how: "
                                                        "the pipeline's 256)")
    p.add_argument("--lr", type=float,
                   help=f"Adam learning rate of the head (default {TRAIN_DEFAULTS['lr']:g}, blcf-how "
                        f"{BLCF_HOW_DEFAULTS['lr']:g}; "
                        f"GeM's p: 10x)")
    p.add_argument("--from-block", type=int, choices=range(LAST_BLOCK + 1), metavar="N",
                   help="also train the backbone's blocks N..15 and its head conv (gem-fc head; BatchNorm frozen): "
                        "the frozen stem and blocks 0..N-1 run once per training image and their output is kept "
                        "in memory. 11: the stride-32 stages (~7 tuples/s on one CPU core), 15: the last block, "
                        "0: the whole network (meant for a GPU, --device auto). Default: the head only, on cached "
                        "maps. The model then holds the tuned blocks, and gem-ft describes images through them")
    p.add_argument("--backbone-lr", type=float, default=TRAIN_DEFAULT_BACKBONE_LR,
                   help="Adam learning rate of the backbone blocks trained with --from-block (default %(default)g)")
    p.add_argument("--lr-decay", type=float, default=1.0,
                   help="learning rates multiplied by this after every epoch (default 1: constant)")
    p.add_argument("--batch", type=int, help=f"tuples per step (default {TRAIN_DEFAULTS['batch']}, blcf-how "
                                             f"{BLCF_HOW_DEFAULTS['batch']})")
    p.add_argument("--max-tuples", type=int, help="tuples per epoch at most (default: every verified pair, both ways)")
    p.add_argument("--min-inliers", type=int, help="homography inliers that make a positive pair (default: mining's)")
    p.add_argument("--shortlist", type=int, help="candidates verified per image while mining (default: mining's)")
    p.add_argument("--branching", type=int, help="mining vocabulary branching (default 141, as sift-he)")
    p.add_argument("--depth", type=int, help="mining vocabulary depth (default 2)")
    p.add_argument("--seed", type=int, default=0, help="random seed (training is deterministic on the CPU)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--force", action="store_true", help="train again over an existing model")
    common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("index", help="build an index, or extend one with --add")
    p.add_argument("images", nargs="+", help="image files, folders, or @list.txt")
    p.add_argument("-o", "--output", required=True, help="index directory")
    p.add_argument("--method", help=f"pipeline of a new index (default sift-bow): {methods}")
    p.add_argument("--vocab", help="vocabulary directory (for a new local-feature index)")
    learned_parts(p)
    p.add_argument("--root", help="folder the image names are relative to (default: the deepest folder holding "
                                  "all the images); recorded in the index")
    p.add_argument("--add", action="store_true", help="add the images to the existing index (keeps its method "
                                                      "and root)")
    p.add_argument("--force", action="store_true", help="replace an existing index")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="build on a Dask cluster: its scheduler's address (tcp://host:8786), a scheduler file, or "
                        "local[:N] for N worker processes on this machine; the images, the output and --cache must "
                        "be on storage every worker sees")
    p.add_argument("--shards", type=int, default=1,
                   help="save a sharded index of N shards, ranking exactly as the merged index (every pipeline but "
                        "fusion, diffusion and ASMK* ones)")
    p.add_argument("--partition-size", type=int, default=256, help="images per Dask task (default %(default)s)")
    common(p)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("query", help="search an index with one or more images")
    p.add_argument("images", nargs="+", help="query image files, folders, or @list.txt")
    p.add_argument("--index", required=True, help="index directory")
    p.add_argument("--top-k", type=int, default=10, help="results per query (default 10)")
    p.add_argument("--box", help="query region x0,y0,x1,y1 in pixels")
    p.add_argument("--format", choices=["table", "jsonl", "csv", "pairs"], default="table",
                   help="table (default); jsonl: one JSON object per result {query, rank, name, path, score, "
                        "inliers, homography}; csv: the same columns but homography; pairs: 'query path' per "
                        "line (COLMAP/hloc image pairs)")
    p.add_argument("-o", "--output", help="write the results to this file instead of the terminal")
    p.add_argument("--exclude-self", action="store_true", help="leave out a result that is the query file itself")
    p.add_argument("--draw", metavar="PNG", help="write a picture of the query beside its top results, "
                                                  "inlier matches drawn (one PNG per query when there are several)")
    p.add_argument("--draw-top", type=int, default=5, help="results in the picture (default 5)")
    p.add_argument("--checksums", action="store_true",
                   help="read the whole index and check every file's checksum first (default: memory-map it, which "
                        "starts fast whatever its size; shapes, dtypes and posting bounds are checked either way)")
    search_settings(p)
    common(p)
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("remove", help="remove images from an index, by name")
    p.add_argument("index", help="index directory")
    p.add_argument("names", nargs="+", help="image names as the index lists them (or their files), or @list.txt")
    p.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_remove)

    p = sub.add_parser("info", help="describe a saved index or vocabulary")
    p.add_argument("path", help="index or vocabulary directory")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("cache", help="show or clean the feature cache",
                       description="The feature cache keeps every image's extracted features, keyed by the "
                                   "file's content and the extractor settings: a re-run, a moved folder or an "
                                   "interrupted build does not extract again. It is bounded by "
                                   "$CBIR_CACHE_MAX_BYTES (default 20 GiB); the least recently used images "
                                   "go first.")
    p.add_argument("action", choices=["info", "clean"])
    p.add_argument("--older-than", type=float, metavar="DAYS", help="clean: remove images unused for DAYS days")
    p.add_argument("--max-size", metavar="SIZE", help="clean: remove the least recently used images down to "
                                                       "SIZE (e.g. 500M, 20G)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--cache", default=default_cache_dir(),
                   help="feature cache folder (default: %(default)s; $CBIR_CACHE sets it)")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("compare", help="compare two methods on a benchmark: a report with per-query scores, "
                                       "where each wins, timings and bytes",
                       description="Runs every benchmark query through two saved indexes (each built from the "
                                   "benchmark, e.g. by cbir eval --index DIR or make demo) and writes a report "
                                   "folder: README.md (summary table, the queries where each method wins most), "
                                   "scatter.png (per-query AP or N-S), one picture strip per listed query.")
    p.add_argument("--dataset", required=True, choices=["holidays", "ukbench", "revisitop"])
    p.add_argument("--root", required=True, help="dataset folder")
    p.add_argument("--run", action="append", required=True, metavar="INDEX[:PIPELINE]",
                   help="a saved index and the pipeline to search it with (default: its own); give two")
    p.add_argument("-o", "--output", required=True, help="report folder to write")
    p.add_argument("--listed", type=int, default=5, help="queries listed where each method wins most (default 5)")
    p.add_argument("--top", type=int, default=5, help="results per method in each picture strip (default 5)")
    p.add_argument("--cache", default=default_cache_dir(),
                   help="feature cache folder (default: %(default)s; $CBIR_CACHE sets it); '' disables it")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("serve", help="a web page (and JSON API) to search indexes by example, see the matches "
                                     "and compare pipelines side by side",
                       description="Serves one or more saved indexes, loaded once and memory-mapped, at "
                                   "http://HOST:PORT/ (page) and /api/... (JSON; schema at /openapi.json). Binds "
                                   "to 127.0.0.1 "
                                   "unless --host says otherwise: anyone who reaches the port can search and see "
                                   "the indexed images.")
    p.add_argument("--index", action="append", required=True, metavar="DIR",
                   help="index directory to serve (repeat for several; their pipelines can be compared)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default %(default)s)")
    p.add_argument("--benchmark", action="append", metavar="DATASET:ROOT",
                   help="ground truth of a benchmark the indexes were built from (holidays:PATH or ukbench:PATH): "
                        "adds the per-query evaluation view")
    p.add_argument("--max-upload", default="20M", help="largest query upload accepted (default %(default)s)")
    p.add_argument("--checksums", action="store_true",
                   help="read the indexes whole and check every file's checksum first (default: memory-map them)")
    common(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("eval", help="score a method on a benchmark")
    p.add_argument("--dataset", required=True, choices=["holidays", "ukbench", "revisitop"])
    p.add_argument("--root", required=True, help="dataset folder")
    p.add_argument("--method", default="sift-bow", help=f"pipeline name: {methods}")
    p.add_argument("--vocab", help="vocabulary directory; without it one is trained (on --train-root)")
    learned_parts(p)
    p.add_argument("--index", help="index directory to reuse, or to save the built index in")
    p.add_argument("--rankings", help="write one JSON line per query with its full ranking")
    search_settings(p)
    common(p)
    p.set_defaults(func=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "cache", None) == "":
        args.cache = None
    if getattr(args, "top_k", 1) < 1:
        print(f"cbir: --top-k must be at least 1 (got {args.top_k})", file=sys.stderr)
        return 2
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("cbir: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("cbir: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader (e.g. ``| head``) stopped: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (UsageError, IndexFormatError, ImageReadError, FileNotFoundError, KeyError, ValueError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"cbir: {message}", file=sys.stderr)
        return 1
    finally:
        logger.removeHandler(handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
