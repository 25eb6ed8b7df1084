"""Building an index, written once: learn what a pipeline needs, then make its empty index.

Used by the CLI (``cbir vocab``, ``cbir index``, ``cbir eval``), the demo and the
benchmarks. Every learned part (vocabulary, Hamming embedding, local or global
whitening) is learned from a list of image paths; which images those are is
the caller's choice (the benchmarks use the *other* dataset).
"""
from __future__ import annotations

import logging
import os
from typing import Sequence

import numpy as np

from bovw.extraction import ExtractionReport, iter_features
from bovw.hamming import HammingEmbedding
from bovw.vocabulary import VocabularyConfig, VocabularyTree
from cbir.fusion_index import FusionIndex
from cbir.global_index import GlobalIndex
from cbir.pipelines import PIPELINES, Pipeline, get_pipeline
from cbir.retrieval_index import RetrievalIndex, local_feature_cache, local_feature_reader
from cbir.searchable import SearchableIndex
from cnn.global_descriptors import raw_vectors
from cnn.whitening import PCAWhitening
from index.asmk import AsmkEmbedding
from index.persistence import load_arrays

logger = logging.getLogger("cbir")


class BuildError(ValueError):
    """A pipeline cannot be built from what was given; the message says what is missing."""


def _local_pipeline(pipeline: Pipeline | str) -> Pipeline:
    pipeline = get_pipeline(pipeline)
    if pipeline.kind != "local":
        raise BuildError(f"pipeline {pipeline.name!r} uses global descriptors: it has no vocabulary, "
                         f"Hamming embedding or local whitening")
    return pipeline


#: Training descriptors kept in memory (vocabulary, Hamming embedding, whitening): beyond this, a
#: uniform random sample of this size, drawn while streaming, so memory stays flat as the training
#: set grows. 1 GiB: 2.1M SIFT descriptors (the benchmark subsets have 1.7M: all kept), 400k BLCF ones.
MAX_TRAINING_BYTES = 2 ** 30
#: Model heads that hold a whitening of BLCF's conv features (``cbir train --head``): the closed-form Lw of
#: the verified pairs' positions, and the same trained further with HOW's loss.
CONV_WHITENING_HEADS = ("blcf-lw", "blcf-how")


class DescriptorSample:
    """A uniform random sample of at most ``capacity`` rows of a stream (reservoir sampling).

    Args:
        capacity: rows kept.
        seed: random seed (the sample is a function of the stream and the seed).
    """

    def __init__(self, capacity: int, seed: int = 0):
        self.capacity = int(capacity)
        self.seen = 0
        self.rng = np.random.default_rng(seed)
        self._parts: list[np.ndarray] = []
        self._reservoir: np.ndarray | None = None

    def add(self, rows: np.ndarray) -> None:
        """Offer (m, d) rows to the sample."""
        fits = max(0, min(len(rows), self.capacity - self.seen))
        if fits:
            self._parts.append(rows[:fits])
        rest = rows[fits:]
        self.seen += fits
        if not len(rest):
            return
        if self._reservoir is None:
            self._reservoir = np.concatenate(self._parts)
            self._parts = []
        # Algorithm R: the t-th row (1-based) replaces a random slot with probability capacity / t.
        slots = (self.rng.random(len(rest)) * (self.seen + np.arange(1, len(rest) + 1))).astype(np.int64)
        keep = slots < self.capacity
        self._reservoir[slots[keep]] = rest[keep]
        self.seen += len(rest)

    def rows(self) -> np.ndarray:
        """(min(seen, capacity), d) the sampled rows, in stream order while nothing was replaced."""
        return self._reservoir if self._reservoir is not None else np.concatenate(self._parts)


def local_descriptors(paths: Sequence[str], pipeline: Pipeline | str, cache_dir: str | None = None,
                      n_jobs: int = 1, progress: bool | None = None, max_bytes: int = MAX_TRAINING_BYTES,
                      seed: int = 0) -> tuple[np.ndarray, ExtractionReport]:
    """(n, d) float32 local descriptors of the usable images of ``paths``: all of them, or a uniform
    random sample (``seed``) of ``max_bytes`` when there are more; and the extraction report."""
    build = _local_pipeline(pipeline).build
    report = ExtractionReport()
    sample = None
    extract, backend = local_feature_reader(build)
    for _, features in iter_features([str(p) for p in paths], extract, local_feature_cache(build, cache_dir), report,
                                     n_jobs=n_jobs, verbose=progress, backend=backend):
        if sample is None:
            row_bytes = features.descriptors.shape[1] * features.descriptors.itemsize
            sample = DescriptorSample(max(1, max_bytes // row_bytes), seed)
        sample.add(features.descriptors)
    if sample is None or sample.seen == 0:
        raise BuildError(f"no descriptors could be extracted from the {len(paths)} training images")
    if sample.seen > sample.capacity:
        logger.info("training on a random sample of %d of %d descriptors", sample.capacity, sample.seen)
    return sample.rows(), report


def learn_local_whitening(paths: Sequence[str], pipeline: Pipeline | str, cache_dir: str | None = None,
                          n_jobs: int = 1, max_descriptors: int = 200_000, seed: int = 0,
                          progress: bool | None = None) -> tuple[PCAWhitening, ExtractionReport]:
    """PCA whitening of the pipeline's local descriptors (BLCF), learned on ``paths`` (at most
    ``max_descriptors``, sampled with ``seed``); keeps the build's ``local_whitening_dim``."""
    descriptors, report = local_descriptors(paths, pipeline, cache_dir, n_jobs, progress)
    return _local_whitening_from(descriptors, _local_pipeline(pipeline), max_descriptors, seed), report


def train_vocabulary(paths: Sequence[str], pipeline: Pipeline | str, config: VocabularyConfig | None = None,
                     cache_dir: str | None = None, n_jobs: int = 1, progress: bool | None = None,
                     whitening: PCAWhitening | None = None, client=None) -> tuple[VocabularyTree, ExtractionReport]:
    """Extract the pipeline's features from ``paths`` and train a vocabulary tree on them.

    Args:
        paths: training images (unusable ones are skipped and reported).
        pipeline: gives the feature extractor, and the tree shape when ``config`` is None.
        config: tree shape and training settings (default: the pipeline's).
        cache_dir: feature cache folder.
        n_jobs: extraction threads.
        progress: progress bars (None: only on a terminal).
        whitening: applied to the descriptors first (the index must use the same one).
        client: a ``distributed.Client``: the per-node k-means run on its workers (the features
            are extracted here); the tree is the same as without it.
    """
    descriptors, report = local_descriptors(paths, pipeline, cache_dir, n_jobs, progress)
    return _vocabulary_from(descriptors, _local_pipeline(pipeline), config, progress, whitening, client), report


def learn_hamming(paths: Sequence[str], pipeline: Pipeline | str, vocabulary: VocabularyTree,
                  cache_dir: str | None = None, n_jobs: int = 1, progress: bool | None = None,
                  whitening: PCAWhitening | None = None) -> tuple[HammingEmbedding, ExtractionReport]:
    """Learn a Hamming embedding's per-word medians from the descriptors of ``paths``."""
    descriptors, report = local_descriptors(paths, pipeline, cache_dir, n_jobs, progress)
    return hamming_from(descriptors, _local_pipeline(pipeline), vocabulary, n_jobs, whitening), report


def _local_whitening_from(descriptors: np.ndarray, pipeline: Pipeline, max_descriptors: int = 200_000,
                          seed: int = 0) -> PCAWhitening:
    """``learn_local_whitening`` on (n, d) descriptors already extracted."""
    if len(descriptors) > max_descriptors:
        keep = np.random.default_rng(seed).choice(len(descriptors), max_descriptors, replace=False)
        descriptors = descriptors[np.sort(keep)]
    return PCAWhitening.learn(descriptors, pipeline.build.local_whitening_dim)


def _vocabulary_from(descriptors: np.ndarray, pipeline: Pipeline, config: VocabularyConfig | None,
                     progress: bool | None, whitening: PCAWhitening | None, client=None) -> VocabularyTree:
    """``train_vocabulary`` on (n, d) descriptors already extracted."""
    from cbir.distributed import on_cluster
    if whitening is not None:
        descriptors = whitening.apply(descriptors)
    with on_cluster(client):
        return VocabularyTree.train(descriptors, config or pipeline.build.vocabulary, progress)


def _quantized(descriptors: np.ndarray, pipeline: Pipeline, vocabulary: VocabularyTree, n_jobs: int,
               whitening: PCAWhitening | None) -> tuple[np.ndarray, np.ndarray]:
    """(descriptors as the vocabulary sees them, their words as the index assigns them)."""
    if whitening is not None:
        descriptors = whitening.apply(descriptors)
    return descriptors, vocabulary.quantize(descriptors, beam=pipeline.build.beam, n_jobs=n_jobs)


def hamming_from(descriptors: np.ndarray, pipeline: Pipeline, vocabulary: VocabularyTree, n_jobs: int,
                 whitening: PCAWhitening | None) -> HammingEmbedding:
    """``learn_hamming`` on (n, d) descriptors already extracted."""
    descriptors, words = _quantized(descriptors, pipeline, vocabulary, n_jobs, whitening)
    return HammingEmbedding.learn(descriptors, words, vocabulary.n_words, pipeline.build.hamming_seed)


def asmk_from(descriptors: np.ndarray, pipeline: Pipeline, vocabulary: VocabularyTree, n_jobs: int,
              whitening: PCAWhitening | None) -> AsmkEmbedding:
    """The ASMK* binarisation (``index.asmk``) learned on (n, d) descriptors already extracted."""
    descriptors, words = _quantized(descriptors, pipeline, vocabulary, n_jobs, whitening)
    return AsmkEmbedding.learn(descriptors, words, vocabulary.centers[-1], pipeline.build.hamming_seed)


def learn_global_whitening(paths: Sequence[str], pipeline: Pipeline | str, cache_dir: str | None = None,
                           n_jobs: int = 1, progress: bool | None = None) -> tuple[PCAWhitening, ExtractionReport]:
    """Learn a global pipeline's PCA whitening on images (use other images than the indexed ones)."""
    pipeline = get_pipeline(pipeline)
    if pipeline.kind != "global":
        raise BuildError(f"pipeline {pipeline.name!r} uses local features: learn its whitening with "
                         f"learn_local_whitening")
    extractor = GlobalIndex(pipeline, None, cache_dir).extractor
    report = ExtractionReport()
    config = pipeline.build.descriptor
    rows = [raw_vectors(maps["global"], config) for _, maps in iter_features(
        [str(p) for p in paths], extractor, None, report, n_jobs=n_jobs, verbose=progress)]
    if not rows:
        raise BuildError(f"none of the {len(paths)} whitening images could be read")
    return PCAWhitening.learn(np.concatenate(rows), config.whitening_dim), report


#: Whitenings shipped with the package (``cnn/whitenings/<descriptor>``), used when no whitening images
#: are given. Only R-MAC's: learned on Holidays-811 + UKBench-1000 with all 1280 dims and shrinkage
#: eps 0.01, it was never worse than no whitening on 11 held-out comparisons and better on 6; GeM's and
#: SPoC's lost up to 1.4 points on Holidays when learned on UKBench, and a whitening learned on a
#: user's own 250 photos collapsed every pipeline (benchmarks/results/shipped_whitening.md).
SHIPPED_WHITENINGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "cnn", "whitenings")


def shipped_whitening(pipeline: Pipeline | str) -> PCAWhitening | None:
    """The whitening shipped for a global pipeline's descriptor and backbone (single scale), or None."""
    build = get_pipeline(pipeline).build
    directory = os.path.join(SHIPPED_WHITENINGS, build.descriptor.method)
    if not os.path.isdir(directory) or build.scales != (1.0,):  # learned on single-scale regions
        return None
    meta, arrays = load_arrays(directory, "cbir-shipped-whitening", 1)
    if meta["backbone"] != build.backbone.key or (build.descriptor.whitening_dim or meta["dims"]) != meta["dims"]:
        return None
    return PCAWhitening.from_state_dict(meta, {name: np.asarray(value, np.float32) for name, value in arrays.items()})


def learned_head(model, pipeline: Pipeline | str):
    """The trained head of ``model`` (a model directory, a ``LearnedModel`` or a ``LearnedHead``)
    for ``pipeline``, refused (ModelFormatError, BuildError) when made for another backbone or head."""
    from cnn.learned_model import LearnedHead, LearnedModel
    pipeline = get_pipeline(pipeline)
    if pipeline.kind != "global" or pipeline.build.learned is None:
        learned = [p.name for p in PIPELINES.values() if p.kind == "global" and p.build.learned]
        raise BuildError(f"pipeline {pipeline.name!r} uses no trained model; --model is for {', '.join(learned)} "
                         f"and, with a blcf-lw or blcf-how model, the BLCF pipelines")
    if isinstance(model, (str, os.PathLike)):
        model = LearnedModel.load(os.fspath(model), backbone=pipeline.build.backbone.key)
    head = model if isinstance(model, LearnedHead) else model.inference_head()
    if head.kind != pipeline.build.learned:
        raise BuildError(f"pipeline {pipeline.name!r} needs a {pipeline.build.learned} head; the model holds a "
                         f"{head.kind} one")
    return head


def conv_whitening(model, pipeline: Pipeline | str) -> PCAWhitening:
    """The conv-feature whitening of a ``cbir train --head blcf-lw`` (or ``blcf-how``) model (a model directory or a
    ``LearnedModel``) for the BLCF ``pipeline``, refused (ModelFormatError, BuildError) when made for
    other features or holding another head."""
    from cnn.learned_model import LearnedModel
    pipeline = get_pipeline(pipeline)
    conv = pipeline.build.conv
    if isinstance(model, (str, os.PathLike)):
        model = LearnedModel.load(os.fspath(model), backbone=conv.backbone.key)
    if model.head not in CONV_WHITENING_HEADS:
        raise BuildError(f"pipeline {pipeline.name!r} takes a blcf-lw or blcf-how model (cbir train --head blcf-lw "
                         f"or blcf-how); the model holds a {model.head} head")
    features = model.data.get("features")
    if features != conv.key:
        serves = [p.name for p in PIPELINES.values() if p.kind == "local" and p.build.conv is not None
                  and p.build.conv.key == features]
        raise BuildError(f"the model's whitening was learned on the conv features {features!r}, pipeline "
                         f"{pipeline.name!r} extracts {conv.key!r}; the model serves {', '.join(serves) or 'none'}")
    whitening = model.inference_head().whitening
    return PCAWhitening(whitening.mean, whitening.projection, method="learned")


def empty_index(pipeline: Pipeline | str, vocabulary: VocabularyTree | None = None,
                whitening: PCAWhitening | None = None, hamming: HammingEmbedding | None = None,
                cache_dir: str | None = None, model=None, asmk: AsmkEmbedding | None = None) -> SearchableIndex:
    """An empty index of the right kind for ``pipeline`` with the given learned parts (``model``:
    a trained model for pipelines with a learned head, see ``learned_head``; ``asmk``: the ASMK*
    binarisation of ASMK* pipelines)."""
    pipeline = get_pipeline(pipeline)
    if pipeline.kind == "fusion":
        raise BuildError(f"pipeline {pipeline.name!r} joins two indexes: use build_index")
    if pipeline.kind == "global":
        if vocabulary is not None or hamming is not None or asmk is not None:
            raise BuildError(f"pipeline {pipeline.name!r} uses global descriptors: it takes no vocabulary")
        if pipeline.build.learned is not None and model is None:
            raise BuildError(f"pipeline {pipeline.name!r} needs a trained model: train one with cbir train "
                             f"--images FOLDER --head {pipeline.build.learned} --out MODEL, then give --model MODEL")
        head = learned_head(model, pipeline) if model is not None else None
        return GlobalIndex(pipeline, whitening, cache_dir, head=head)
    if model is not None:
        raise BuildError(f"pipeline {pipeline.name!r} uses local features: it takes no trained model")
    if vocabulary is None:
        raise BuildError(f"pipeline {pipeline.name!r} needs a vocabulary")
    try:
        return RetrievalIndex(pipeline, vocabulary, whitening, hamming, cache_dir, asmk)
    except ValueError as exc:
        raise BuildError(str(exc)) from None


def build_index(pipeline: Pipeline | str, vocabulary: VocabularyTree | None = None,
                train_paths: Sequence[str] | None = None, whiten_paths: Sequence[str] | None = None,
                vocabulary_config: VocabularyConfig | None = None, cache_dir: str | None = None,
                n_jobs: int = 1, progress: bool | None = None, model=None) -> SearchableIndex:
    """Learn what ``pipeline`` needs and return its empty index.

    Args:
        pipeline: the method.
        vocabulary: a trained vocabulary (local pipelines whose descriptors are not whitened).
        train_paths: images to train the vocabulary (when none is given), the Hamming
            embedding or ASMK* binarisation and, for BLCF, the local whitening on.
        whiten_paths: images to learn a whitening on (global pipelines; BLCF: instead of
            ``train_paths``). Use other images than the indexed ones.
        vocabulary_config: vocabulary shape when training one (default: the pipeline's).
        cache_dir: feature cache folder.
        n_jobs: extraction threads.
        progress: progress bars (None: only on a terminal).
        model: a trained model (directory, ``LearnedModel`` or ``LearnedHead``) for pipelines
            with a learned head (``gem-ft``); its FC layer is their whitening. For BLCF pipelines,
            a ``blcf-lw`` or ``blcf-how`` model (directory or ``LearnedModel``): its whitening of the conv features
            replaces the one learned on ``train_paths``.

    Raises:
        BuildError: what is missing (e.g. a Hamming pipeline without training images).
    """
    pipeline = get_pipeline(pipeline)
    if pipeline.kind == "fusion":  # a local part (trained on train_paths) and a global part (whiten_paths)
        parts = pipeline.search.fusion
        return FusionIndex(pipeline, build_index(parts.local, vocabulary, train_paths, None, vocabulary_config,
                                                 cache_dir, n_jobs, progress),
                           build_index(parts.dense, None, None, whiten_paths, None, cache_dir, n_jobs, progress),
                           cache_dir)
    if pipeline.kind == "global" and (pipeline.build.learned is not None or model is not None):
        if whiten_paths:
            raise BuildError(f"pipeline {pipeline.name!r} takes its whitening from the trained model (its FC "
                             f"layer, learned by cbir train): give --model, not --whiten-root")
        return empty_index(pipeline, cache_dir=cache_dir, model=model)
    if model is not None and (pipeline.kind == "global" or pipeline.build.conv is None):
        raise BuildError(f"pipeline {pipeline.name!r} uses no trained model")
    if pipeline.kind == "global":
        if whiten_paths:
            logger.info("learning the %s whitening on %d images", pipeline.name, len(whiten_paths))
            whitening, _ = learn_global_whitening(whiten_paths, pipeline, cache_dir, n_jobs, progress)
        else:
            whitening = shipped_whitening(pipeline)
            logger.info("%s descriptors: %s", pipeline.name, "the shipped whitening (learned on Holidays and "
                        "UKBench images)" if whitening is not None else "L2-normalised, not whitened (no "
                        "whitening ships for it; one learned on the indexed photos themselves hurts)")
        return empty_index(pipeline, whitening=whitening, cache_dir=cache_dir)
    build = pipeline.build
    whitening = conv_whitening(model, pipeline) if model is not None else None
    if whitening is not None and whiten_paths:
        raise BuildError(f"pipeline {pipeline.name!r} takes its descriptor whitening from the trained model: give "
                         f"--model or --whiten-root, not both")
    if build.local_whitening_dim is not None:
        if whitening is None and not (whiten_paths or train_paths):
            raise BuildError(f"pipeline {pipeline.name} learns a descriptor whitening: give training images "
                             f"(ideally not the ones indexed)")
        if vocabulary is not None:
            raise BuildError(f"pipeline {pipeline.name} trains its vocabulary on whitened descriptors: "
                             f"give training images instead of a vocabulary")
    if vocabulary is None and not train_paths:
        raise BuildError(f"pipeline {pipeline.name} needs a vocabulary or training images")
    if (build.hamming or build.asmk) and not train_paths:
        learned = "a Hamming embedding" if build.hamming else "an ASMK* binarisation"
        raise BuildError(f"pipeline {pipeline.name} learns {learned}: give training images")
    # The training images are extracted once for whatever is learned from them.
    training = local_descriptors(train_paths, pipeline, cache_dir, n_jobs, progress)[0] \
        if vocabulary is None or build.hamming or build.asmk else None
    if build.local_whitening_dim is not None and whitening is None:
        whitening = _local_whitening_from(
            local_descriptors(whiten_paths, pipeline, cache_dir, n_jobs, progress)[0] if whiten_paths else training,
            pipeline)
    if vocabulary is None:
        config = vocabulary_config or build.vocabulary
        logger.info("training a %d-word vocabulary on %d images", config.n_words, len(train_paths))
        vocabulary = _vocabulary_from(training, pipeline, config, progress, whitening)
    hamming = hamming_from(training, pipeline, vocabulary, n_jobs, whitening) if build.hamming else None
    asmk = asmk_from(training, pipeline, vocabulary, n_jobs, whitening) if build.asmk else None
    return empty_index(pipeline, vocabulary, whitening, hamming, cache_dir, asmk=asmk)
