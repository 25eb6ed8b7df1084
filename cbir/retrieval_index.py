"""The local-feature index (SIFT, Hamming-embedded SIFT, BLCF): vocabulary + inverted file +
per-image store, searchable by example and saved as one directory."""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable, Sequence

import numpy as np

from bovw.feature_cache import FeatureCache, default_max_bytes
from bovw.features import LocalFeatures
from bovw.hamming import HammingEmbedding
from bovw.images import load_image, resize_to_max_side
from bovw.vocabulary import VocabularyConfig, VocabularyTree
from cbir.pipelines import PIPELINES, LocalBuild, Pipeline, get_pipeline
from cbir.searchable import SearchableIndex, crop, decode_query, parse_box, part_arrays
from cnn.whitening import PCAWhitening
from index.asmk import AsmkEmbedding, asmk_scores
from index.image_store import ImageStore
from index.inverted_file import InvertedFile
from index.match_kernel import SIGNATURE
from index.persistence import IndexFormatError, load_arrays, save_arrays
from index.ranking import LocalQuery, rank_local, shortlist
from index.reranking import RankedImage, spatial_rerank
from index.search_options import SearchOptions

VOCABULARY_FORMAT = "cbir-vocabulary"
VOCABULARY_VERSION = 1


def save_vocabulary(vocabulary: VocabularyTree, directory: str, pipeline: Pipeline | str | None = None) -> None:
    """Atomically save a vocabulary as a directory (no pickle), recording the pipeline (and so the
    features) it was trained for, so that an index of another pipeline can refuse it."""
    meta, arrays = vocabulary.state_dict()
    if pipeline is not None:
        pipeline = get_pipeline(pipeline)
        meta["trained_for"] = {"pipeline": pipeline.name, "features": pipeline.build.extractor.key}
    save_arrays(directory, VOCABULARY_FORMAT, VOCABULARY_VERSION, meta, arrays)


def load_vocabulary(directory: str) -> VocabularyTree:
    """Load a vocabulary saved by ``save_vocabulary`` (IndexFormatError if unusable)."""
    return _load_vocabulary(directory)[0]


def _load_vocabulary(directory: str) -> tuple[VocabularyTree, dict | None]:
    meta, arrays = load_arrays(directory, VOCABULARY_FORMAT, VOCABULARY_VERSION)
    try:
        return VocabularyTree.from_state_dict(meta, arrays), meta.get("trained_for")
    except (ValueError, KeyError, TypeError) as exc:
        raise IndexFormatError(f"{directory}: invalid vocabulary ({exc})") from exc


def load_vocabulary_for(directory: str, pipeline: Pipeline | str) -> VocabularyTree:
    """Load a vocabulary for an index of ``pipeline``, refusing one trained for other features or for
    a pipeline with another vocabulary shape (ValueError naming both).

    A vocabulary saved without its pipeline (before it was recorded) is taken as it is.
    """
    pipeline = get_pipeline(pipeline)
    vocabulary, trained_for = _load_vocabulary(directory)
    build = pipeline.build
    if trained_for is None:
        return vocabulary
    other = get_pipeline(trained_for["pipeline"]) if trained_for["pipeline"] in PIPELINES else None
    if trained_for["features"] != build.extractor.key:
        raise ValueError(f"{directory} was trained on other features ({trained_for['features']}) than "
                         f"{pipeline.name} extracts ({build.extractor.key}); train one with "
                         f"cbir vocab --method {pipeline.name}")
    if other is not None and other.build.vocabulary.n_words != build.vocabulary.n_words:
        raise ValueError(f"{directory} was trained for {other.name} ({vocabulary.n_words} words); "
                         f"{pipeline.name} uses a {build.vocabulary.n_words}-word vocabulary: train one with "
                         f"cbir vocab --method {pipeline.name}")
    return vocabulary


def read_local_features(build: LocalBuild, path: str) -> LocalFeatures:
    """Decode an image file and extract the build's local features (no cache).

    Raises:
        bovw.images.ImageReadError: the file cannot be used.
    """
    extractor = build.extractor
    return extractor.extract(load_image(path, extractor.image, color=extractor.color))


def local_feature_reader(build: LocalBuild) -> tuple[Callable[[str], LocalFeatures], str]:
    """(path -> the build's features, ``bovw.extraction.iter_features`` backend to run it with).

    SIFT runs in worker processes (2 workers: 252 against 276 ms per 1024-px photo with
    threads, ``benchmarks/results/extraction_speed.md``); conv features in threads, so that
    the network is loaded once.
    """
    return functools.partial(read_local_features, build), "processes" if build.sift is not None else "threads"


def local_feature_cache(build: LocalBuild, directory: str | None) -> FeatureCache | None:
    """The feature cache of the build's extractor in ``directory`` (None: no cache), bounded by
    ``bovw.feature_cache.default_max_bytes()``."""
    return FeatureCache(directory, build.extractor.key, default_max_bytes()) if directory else None


@dataclasses.dataclass
class AsmkQuery(LocalQuery):
    """A query prepared for an ASMK* index: its features (``keypoints``, ``words``: (n, k), for
    spatial verification) and its aggregated signatures.

    Attributes:
        word_ids: (u,) int64 distinct words of the query over all assignments.
        word_signatures: (u,) uint64 aggregated signature for each.
    """

    word_ids: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    word_signatures: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.uint64))


def rank_asmk(query: AsmkQuery, inverted: InvertedFile, images: ImageStore, options: SearchOptions,
              top_k: int | None = None, n_jobs: int = 1) -> list[RankedImage]:
    """Rank a collection by ASMK* similarity (``options.asmk``), then spatially verify the shortlist
    (``options.verification``).

    Verification matches the features the image store keeps (keypoint and word each; postings
    only hold the aggregates) through shared words whose aggregated signatures in the query and
    the image lie within ``options.asmk.verification_threshold`` bits.

    Args:
        query: the prepared query.
        inverted: postings per (image, word) with aggregated signatures.
        images: per-feature keypoints and words of the collection.
        options: ASMK* selectivity and verification settings (query expansion and window search
            do not apply).
        top_k: results wanted (None: every image).
        n_jobs: threads for spatial verification.

    Returns:
        at most ``top_k`` entries, best first.
    """
    if options.asmk is None or options.expansion is not None or options.window_search:
        raise ValueError("an ASMK* index ranks by its kernel (ASMK* settings needed) and spatial verification "
                         "only (no query expansion or window search)")
    config = options.asmk
    scores = asmk_scores(inverted, query.word_ids, query.word_signatures, config)
    wanted = inverted.n_images if top_k is None else min(top_k, inverted.n_images)
    ranking = shortlist(scores, max(wanted, options.shortlist))
    if options.verification is not None:
        signatures = query.word_signatures[np.searchsorted(query.word_ids, query.words)]
        ranking = spatial_rerank(query.keypoints, query.words, ranking, images, options.verification, n_jobs,
                                 signatures, config.verification_threshold, inverted)
    return ranking[:wanted]


class RetrievalIndex(SearchableIndex):
    """Images searchable by their local features through a vocabulary and an inverted file.

    Args:
        pipeline: a local-feature pipeline (SIFT, HE, BLCF) or its name.
        vocabulary: trained vocabulary tree; its shape is recorded in the index's build.
        whitening: PCA whitening of the descriptors before quantization (pipelines with
            ``local_whitening_dim``, i.e. BLCF).
        hamming: learned Hamming embedding (pipelines whose build has ``hamming``).
        cache_dir: feature cache folder used when reading images.
        asmk: learned ASMK* binarisation (``index.asmk``): the postings are then one aggregated
            signature per (image, word), ranked by the ASMK* kernel with its selectivity; the image
            store keeps every feature's keypoint and word for spatial verification. Residuals are
            those of the descriptors the vocabulary sees (whitened when there is a whitening).
            Exactly for pipelines whose build has ``asmk``; the selectivity comes with the search
            options (``SearchOptions.asmk``).
    """

    FORMAT = "cbir-index"
    KIND = "local"
    QUERY_TYPE = LocalQuery

    def __init__(self, pipeline: Pipeline | str, vocabulary: VocabularyTree, whitening: PCAWhitening | None = None,
                 hamming: HammingEmbedding | None = None, cache_dir: str | None = None,
                 asmk: AsmkEmbedding | None = None):
        super().__init__(pipeline, cache_dir)
        build = self.pipeline.build
        if (build.local_whitening_dim is not None) != (whitening is not None):
            raise ValueError(f"pipeline {self.pipeline.name!r} needs a learned local whitening" if whitening is None
                             else f"pipeline {self.pipeline.name!r} quantizes descriptors unwhitened")
        if build.hamming != (hamming is not None):
            raise ValueError(f"pipeline {self.pipeline.name!r} " + ("needs a learned Hamming embedding"
                                                                     if hamming is None else "uses no Hamming embedding"))
        if build.asmk != (asmk is not None):
            raise ValueError(f"pipeline {self.pipeline.name!r} " + ("needs a learned ASMK* binarisation"
                                                                     if asmk is None else "is no ASMK* pipeline"))
        # The learned parts fix their own shapes: the build records them as they are.
        if (vocabulary.branching, vocabulary.depth) != (build.vocabulary.branching, build.vocabulary.depth):
            build = dataclasses.replace(build, vocabulary=VocabularyConfig(branching=vocabulary.branching,
                                                                           depth=vocabulary.depth))
        if whitening is not None and whitening.output_dim != build.local_whitening_dim:
            build = dataclasses.replace(build, local_whitening_dim=whitening.output_dim)
        self.pipeline = dataclasses.replace(self.pipeline, build=build)
        self.vocabulary = vocabulary
        self.whitening = whitening
        self.hamming = hamming
        self.asmk = asmk
        signed = hamming is not None or asmk is not None
        self.inverted_file = InvertedFile(vocabulary.n_words, {SIGNATURE: np.uint64} if signed else None)
        self.images = ImageStore(vocabulary.n_words)

    def _comparable_build(self, build):
        if not isinstance(build, LocalBuild):
            return build
        return dataclasses.replace(build, vocabulary=self.pipeline.build.vocabulary,
                                   local_whitening_dim=self.pipeline.build.local_whitening_dim
                                   if build.local_whitening_dim is not None else None)

    # ---- building -----------------------------------------------------------------------------

    def _feature_source(self):
        build = self.pipeline.build
        extract, backend = local_feature_reader(build)
        return extract, local_feature_cache(build, self.cache_dir), backend

    def _item_bytes(self, item: LocalFeatures) -> int:
        return item.keypoints.nbytes + item.descriptors.nbytes

    def _add_batch(self, names: list[str], items: list[LocalFeatures], n_jobs: int) -> None:
        self.add_features(names, items, n_jobs)

    def _descriptors(self, descriptors: np.ndarray) -> np.ndarray:
        """Descriptors as the vocabulary sees them (whitened when the index has a whitening)."""
        return self.whitening.apply(descriptors) if self.whitening is not None else descriptors

    def add_features(self, names: Sequence[str], features: Sequence[LocalFeatures], n_jobs: int = 1) -> None:
        """Index images given by their local features (from any source: SIFT, CNN).

        Args:
            names: one unique name per image.
            features: per image, its LocalFeatures (as the pipeline's extractor gives them).
            n_jobs: quantization threads.
        """
        if not len(features):
            return
        descriptors = np.concatenate([self._descriptors(f.descriptors) for f in features])
        all_words = self.vocabulary.quantize(descriptors, beam=self.pipeline.build.beam, n_jobs=n_jobs).astype(np.int32)
        bounds = np.cumsum([len(f) for f in features])[:-1]
        words = np.split(all_words, bounds)
        posting_words, signatures = words, None
        if self.hamming is not None:
            signatures = np.split(self.hamming.signatures(descriptors, all_words), bounds)
        elif self.asmk is not None:
            centroids = self.vocabulary.centers[-1]
            posting_words, signatures = zip(*(self.asmk.signatures(d, w, centroids)
                                              for d, w in zip(np.split(descriptors, bounds), words)))
        with self._lock.writing():
            self.names.add(list(names))
            self.images.add([f.image_size for f in features], [f.keypoints for f in features], words)
            self.inverted_file.add(list(posting_words),
                                   {SIGNATURE: list(signatures)} if signatures is not None else None)

    def empty_like(self) -> "RetrievalIndex":
        """An empty index with this one's pipeline, learned parts (shared, not copied), cache and root."""
        index = RetrievalIndex(self.pipeline, self.vocabulary, self.whitening, self.hamming, self.cache_dir, self.asmk)
        index.root = self.root
        return index

    def _learned_parts(self) -> dict:
        return {"vocabulary": self.vocabulary, "whitening": self.whitening, "hamming": self.hamming, "asmk": self.asmk}

    def _join_stores(self, indexes: Sequence["RetrievalIndex"]) -> None:
        self.inverted_file = InvertedFile.concatenate([index.inverted_file for index in indexes])
        self.images = ImageStore.concatenate([index.images for index in indexes])

    def _remove_slots(self, slots: list[int]) -> None:
        self.inverted_file.remove(slots)
        self.images.remove(slots)

    def _pending(self) -> bool:
        return bool(self.inverted_file.pending) or self.images.pending

    def _consolidate(self) -> None:
        self.inverted_file.consolidate()
        self.images.consolidate()

    # ---- searching ----------------------------------------------------------------------------

    def query_features(self, query, box=None) -> LocalFeatures:
        """Local features of a query given as a path, an (h, w[, 3]) uint8 RGB array or LocalFeatures.

        ``box`` (x0, y0, x1, y1), in pixels of the image as given, restricts the query:
        SIFT images are cropped before extraction (revisitop); for conv features (BLCF)
        the whole image goes through the network and the positions outside the box are
        dropped, as Mohedano et al. do. A path without a box is looked up in the feature
        cache (never written to by a query).
        """
        build = self.pipeline.build
        extractor = build.extractor
        if isinstance(query, LocalFeatures):
            if box is not None:
                raise ValueError("give the image, not its features, to crop a query to a box")
            return query
        if box is None and not isinstance(query, np.ndarray):
            cache = local_feature_cache(build, self.cache_dir)
            found = cache.get(os.fspath(query)) if cache is not None else None
            return found if found is not None else read_local_features(build, os.fspath(query))
        if box is None or build.conv is None:
            return extractor.extract(self.query_image(query, box, color=extractor.color))
        full = decode_query(query, color=True)
        x0, y0, x1, y1 = parse_box(box)
        crop(full, box)  # refuses a box outside the image
        features = extractor.extract(resize_to_max_side(full, extractor.image.max_side))
        scale = features.image_size[0] / full.shape[0]
        x, y = features.keypoints[:, 0] / scale, features.keypoints[:, 1] / scale
        inside = (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
        return LocalFeatures(features.keypoints[inside], features.descriptors[inside], features.image_size)

    def extracted_query_image(self, query, box=None) -> np.ndarray:
        """(h, w, 3) uint8 RGB: the query image its keypoints refer to (the crop for SIFT with a
        box; the whole image for conv features, whose positions outside the box are dropped)."""
        return self.query_image(query, box if self.pipeline.build.conv is None else None, color=True)

    def prepare_query(self, query, box=None, options: SearchOptions | str | None = None) -> LocalQuery:
        """Extract, whiten, quantize (``query_assignments`` words each) and sign the query's features once
        (an ASMK* index aggregates them per word: ``index.asmk.AsmkQuery``)."""
        options = self.search_options(options)
        features = self.query_features(query, box)
        descriptors = self._descriptors(features.descriptors)
        k = options.query_assignments
        words = self.vocabulary.quantize(descriptors, k=k, beam=self.pipeline.build.beam).astype(np.int32)
        words = words.reshape(len(features), k)
        if self.asmk is not None:
            word_ids, word_signatures = self.asmk.signatures(descriptors, words, self.vocabulary.centers[-1])
            return AsmkQuery(features.keypoints, words, None, word_ids, word_signatures)
        signatures = None
        if self.hamming is not None:
            signatures = self.hamming.signatures(np.repeat(descriptors, words.shape[1], axis=0),
                                                 words.ravel()).reshape(words.shape)
        return LocalQuery(features.keypoints, words, signatures)

    def _is_empty_query(self, prepared: LocalQuery) -> bool:
        return len(prepared.words) == 0

    def _rank(self, prepared: LocalQuery, options: SearchOptions, top_k: int | None, n_jobs: int):
        if self.asmk is not None:
            return rank_asmk(prepared, self.inverted_file, self.images, options, top_k, n_jobs)
        return rank_local(prepared, self.inverted_file, self.images, options, top_k, n_jobs)

    # ---- persistence and facts ----------------------------------------------------------------

    def _parts(self) -> dict:
        return {"vocabulary": self.vocabulary, "inverted_file": self.inverted_file, "images": self.images,
                "whitening": self.whitening, "hamming": self.hamming, "asmk": self.asmk}

    @classmethod
    def _from_parts(cls, pipeline: Pipeline, meta: dict, arrays: dict, cache_dir: str | None) -> "RetrievalIndex":
        def part(kind, prefix):
            return kind.from_state_dict(meta[prefix], part_arrays(arrays, prefix)) if meta.get(prefix) else None
        index = cls(pipeline, part(VocabularyTree, "vocabulary"), part(PCAWhitening, "whitening"),
                    part(HammingEmbedding, "hamming"), cache_dir, part(AsmkEmbedding, "asmk"))
        index.inverted_file = part(InvertedFile, "inverted_file")
        index.images = part(ImageStore, "images")
        return index

    def _check_sizes(self, directory: str) -> None:
        if not (self.inverted_file.n_images == len(self.images) == len(self.names)) \
                or self.inverted_file.n_words != self.vocabulary.n_words:
            raise IndexFormatError(f"{directory}: inverted file, image store, names and vocabulary disagree")

    def _info(self) -> dict:
        inverted = self.inverted_file
        return {"vocabulary_words": self.vocabulary.n_words, "features": self.images.n_features,
                "postings": int(inverted.n_postings), "postings_per_word": inverted.n_postings / inverted.n_words,
                "imbalance_factor": inverted.imbalance_factor,
                "whitening_dim": self.whitening.output_dim if self.whitening is not None else None,
                "whitening_method": self.whitening.method if self.whitening is not None else None,
                "hamming_embedding": self.hamming is not None, "asmk": self.asmk is not None}
