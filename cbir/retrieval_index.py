"""The searchable index: vocabulary + inverted file + per-image store, saved as one directory."""
from __future__ import annotations

import os
import warnings
from dataclasses import replace
from typing import Sequence

import cv2
import numpy as np

from bovw.extraction import ExtractionReport, iter_features
from bovw.features import LocalFeatures
from bovw.hamming import HammingEmbedding
from bovw.images import load_image, resize_to_max_side
from bovw.vocabulary import VocabularyConfig, VocabularyTree
from cbir.pipelines import Pipeline, get_pipeline
from cnn.whitening import PCAWhitening
from index.image_store import ImageStore, name_map
from index.inverted_file import InvertedFile
from index.kernels import top_indices
from index.match_kernel import SIGNATURE, hamming_scores
from index.reranking import RankedImage, expand_and_requery, spatial_rerank, verified_first
from index.window_search import best_window_score
from index.results import SearchResult
from index.rw_lock import ReadWriteLock
from index.persistence import IndexFormatError, load_arrays, read_manifest, save_arrays

INDEX_FORMAT = "cbir-index"
INDEX_VERSION = 1
VOCABULARY_FORMAT = "cbir-vocabulary"
VOCABULARY_VERSION = 1


def save_vocabulary(vocabulary: VocabularyTree, directory: str) -> None:
    """Atomically save a vocabulary as a directory (no pickle)."""
    meta, arrays = vocabulary.state_dict()
    save_arrays(directory, VOCABULARY_FORMAT, VOCABULARY_VERSION, meta, arrays)


def load_vocabulary(directory: str) -> VocabularyTree:
    """Load a vocabulary saved by ``save_vocabulary`` (IndexFormatError if unusable)."""
    meta, arrays = load_arrays(directory, VOCABULARY_FORMAT, VOCABULARY_VERSION)
    try:
        return VocabularyTree.from_state_dict(meta, arrays)
    except (ValueError, KeyError, TypeError) as exc:
        raise IndexFormatError(f"{directory}: invalid vocabulary ({exc})") from exc


def _prefixed(prefix: str, arrays: dict) -> dict:
    return {f"{prefix}.{name}": value for name, value in arrays.items()}


def _unprefixed(prefix: str, arrays: dict) -> dict:
    return {name[len(prefix) + 1:]: value for name, value in arrays.items() if name.startswith(prefix + ".")}


def _training_descriptors(paths: Sequence[str], pipeline: Pipeline, cache_dir: str | None, n_jobs: int,
                          verbose: bool) -> tuple[np.ndarray, ExtractionReport]:
    report = ExtractionReport()
    descriptors = [f.descriptors for _, f in iter_features(
        list(map(str, paths)), pipeline.read_features, pipeline.feature_cache(cache_dir), report,
        n_jobs=n_jobs, verbose=verbose)]
    if sum(len(d) for d in descriptors) == 0:
        raise ValueError("no descriptors could be extracted from the training images")
    return np.concatenate(descriptors), report


def learn_local_whitening(paths: Sequence[str], pipeline: Pipeline, cache_dir: str | None = None,
                          n_jobs: int = 1, max_descriptors: int = 200_000, seed: int = 0,
                          verbose: bool = True) -> tuple[PCAWhitening, ExtractionReport]:
    """PCA whitening of the pipeline's local descriptors (BLCF), learned on ``paths``
    (at most ``max_descriptors``, sampled with ``seed``); keeps ``pipeline.local_whitening_dim``."""
    descriptors, report = _training_descriptors(paths, pipeline, cache_dir, n_jobs, verbose)
    if len(descriptors) > max_descriptors:
        keep = np.random.default_rng(seed).choice(len(descriptors), max_descriptors, replace=False)
        descriptors = descriptors[np.sort(keep)]
    return PCAWhitening.learn(descriptors, pipeline.local_whitening_dim), report


def train_vocabulary(paths: Sequence[str], pipeline: Pipeline, config: VocabularyConfig | None = None,
                     cache_dir: str | None = None, n_jobs: int = 1, verbose: bool = True,
                     whitening: PCAWhitening | None = None) -> tuple[VocabularyTree, ExtractionReport]:
    """Extract the pipeline's features from ``paths`` and train a vocabulary tree on them.

    Args:
        paths: training images (unusable ones are skipped and reported).
        pipeline: gives the feature extractor, and the tree shape when ``config`` is None.
        config: tree shape and training settings.
        cache_dir: feature cache folder.
        n_jobs: extraction threads.
        verbose: progress bars.
        whitening: applied to the descriptors first (the index must use the same one).
    """
    descriptors, report = _training_descriptors(paths, pipeline, cache_dir, n_jobs, verbose)
    if whitening is not None:
        descriptors = whitening.apply(descriptors)
    vocabulary = VocabularyTree.train(descriptors, config or pipeline.vocabulary, verbose)
    return vocabulary, report


def learn_hamming(paths: Sequence[str], pipeline: Pipeline, vocabulary: VocabularyTree,
                  cache_dir: str | None = None, n_jobs: int = 1, verbose: bool = True,
                  whitening: PCAWhitening | None = None) -> tuple[HammingEmbedding, ExtractionReport]:
    """Learn a Hamming embedding's per-word medians from the descriptors of ``paths``."""
    descriptors, report = _training_descriptors(paths, pipeline, cache_dir, n_jobs, verbose)
    if whitening is not None:
        descriptors = whitening.apply(descriptors)
    words = vocabulary.quantize(descriptors, beam=pipeline.beam)
    seed = pipeline.hamming.seed if pipeline.hamming else 0
    return HammingEmbedding.learn(descriptors, words, vocabulary.n_words, seed), report


class RetrievalIndex:
    """A collection of images searchable by example.

    Args:
        vocabulary: trained vocabulary.
        pipeline: the method (features and query options); a name or a Pipeline.
        cache_dir: optional feature cache folder used when reading images.
        whitening: PCA whitening applied to descriptors before quantization (BLCF).
        hamming: learned Hamming embedding (pipelines with ``hamming`` set).
    """

    def __init__(self, vocabulary: VocabularyTree, pipeline: Pipeline | str = "sift-bow",
                 cache_dir: str | None = None, whitening: PCAWhitening | None = None,
                 hamming: HammingEmbedding | None = None):
        self.pipeline = get_pipeline(pipeline) if isinstance(pipeline, str) else pipeline
        self.vocabulary = vocabulary
        self.whitening = whitening
        if (self.pipeline.local_whitening_dim is None) != (whitening is None) and self.pipeline.conv is not None:
            raise ValueError(f"pipeline {self.pipeline.name!r} needs a learned local whitening")
        if (self.pipeline.hamming is None) != (hamming is None):
            raise ValueError(f"pipeline {self.pipeline.name!r} " + ("needs a learned Hamming embedding"
                             if hamming is None else "does not use a Hamming embedding"))
        self.hamming = hamming
        self.inverted_file = InvertedFile(vocabulary.n_words, {SIGNATURE: np.uint64} if hamming else None)
        self.images = ImageStore()
        self.cache_dir = cache_dir
        self._lock = ReadWriteLock()

    def __len__(self) -> int:
        return len(self.images)

    @property
    def names(self) -> list[str]:
        """Names of the indexed images, by slot."""
        return self.images.names

    def extract(self, path: str) -> LocalFeatures:
        """Features of an image file with this index's extractor (cached when a cache is set)."""
        cache = self.pipeline.feature_cache(self.cache_dir)
        found = cache.get(path) if cache else None
        if found is None:
            found = self.pipeline.read_features(path)
            if cache:
                cache.put(path, found)
        return found

    def add_images(self, paths: Sequence[str], names: Sequence[str] | None = None, n_jobs: int = 1,
                   verbose: bool = True) -> ExtractionReport:
        """Extract, quantize and index image files; unusable files are skipped and reported.

        Args:
            paths: image files.
            names: how each image is called in results (default: its path).
            n_jobs: extraction and quantization threads.
            verbose: progress bars.

        Returns:
            what was extracted, taken from the cache, and skipped (with reasons).
        """
        name_of = name_map(paths, names)
        report = ExtractionReport()
        batch_names, batch_features = [], []
        extracted = iter_features([str(p) for p in paths], self.pipeline.read_features,
                                  self.pipeline.feature_cache(self.cache_dir), report, n_jobs=n_jobs, verbose=verbose)
        for name, features in self.images.new_images(extracted, name_of, report):
            batch_names.append(name)
            batch_features.append(features)
            if len(batch_names) >= 1000:
                self.add_features(batch_names, batch_features, n_jobs)
                batch_names, batch_features = [], []
        if batch_names:
            self.add_features(batch_names, batch_features, n_jobs)
        return report

    def _descriptors(self, features: LocalFeatures) -> np.ndarray:
        """Descriptors as the vocabulary sees them (whitened when the index has a whitening)."""
        return self.whitening.apply(features.descriptors) if self.whitening is not None else features.descriptors

    def add_features(self, names: Sequence[str], features: Sequence[LocalFeatures], n_jobs: int = 1) -> None:
        """Index images given by their local features (from any source: SIFT, CNN); ``n_jobs``
        quantization threads."""
        if not len(features):
            return
        descriptors = np.concatenate([self._descriptors(f) for f in features])
        all_words = self.vocabulary.quantize(descriptors, beam=self.pipeline.beam, n_jobs=n_jobs).astype(np.int32)
        bounds = np.cumsum([len(f) for f in features])[:-1]
        words = np.split(all_words, bounds)
        payload = {SIGNATURE: np.split(self.hamming.signatures(descriptors, all_words), bounds)} \
            if self.hamming is not None else None
        with self._lock.writing():
            self.images.add(list(names), [f.image_size for f in features], [f.keypoints for f in features], words,
                            payload[SIGNATURE] if payload else None)
            self.inverted_file.add(words, payload)

    def remove(self, names: Sequence[str]) -> None:
        """Remove images by name (KeyError naming the first unknown one)."""
        slots = self.images.slots(names)
        with self._lock.writing():
            self.inverted_file.remove(slots)
            self.images.remove(slots)

    def query_image(self, query, bbox: tuple | None = None) -> np.ndarray:
        """The query image exactly as features are extracted from it.

        Args:
            query: image path or (h, w[, 3]) uint8 array (RGB).
            bbox: optional (x0, y0, x1, y1) region, in pixels of the original image.

        Returns:
            uint8 image (RGB for conv features, else grayscale), cropped to ``bbox``,
            then down-scaled to the pipeline's max side.
        """
        options, color = self.pipeline.image_options, self.pipeline.color
        if isinstance(query, np.ndarray):
            image = np.asarray(query, np.uint8)
            if image.ndim == 3 and not color:
                image = cv2.cvtColor(image[..., :3], cv2.COLOR_RGB2GRAY)
            elif image.ndim == 2 and color:
                image = np.repeat(image[..., None], 3, axis=2)
        else:
            image = load_image(os.fspath(query), replace(options, max_side=0) if bbox else options, color)
        if bbox is not None:
            x0, y0, x1, y1 = (int(round(v)) for v in bbox)
            image = image[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)]
        return resize_to_max_side(image, options.max_side)

    def query_features(self, query, bbox: tuple | None = None) -> LocalFeatures:
        """Features of a query given as a path, an image array or LocalFeatures.

        ``bbox`` (x0, y0, x1, y1), in pixels of the original image, restricts the
        query: SIFT images are cropped before extraction (revisitop); for conv
        features (BLCF) the whole image goes through the network and the positions
        outside the box are dropped, as Mohedano et al. do.
        """
        if isinstance(query, LocalFeatures):
            if bbox is not None:
                raise ValueError("give the image, not its features, to crop a query to a bounding box")
            return query
        if bbox is not None and self.pipeline.conv is not None:
            full = self.query_features(query)
            original = query.shape[:2] if isinstance(query, np.ndarray) else \
                load_image(os.fspath(query), replace(self.pipeline.image_options, max_side=0)).shape[:2]
            scale = full.image_size[0] / original[0]
            x, y = full.keypoints[:, 0] / scale, full.keypoints[:, 1] / scale
            inside = (x >= bbox[0]) & (x <= bbox[2]) & (y >= bbox[1]) & (y <= bbox[3])
            return LocalFeatures(full.keypoints[inside], full.descriptors[inside], full.image_size)
        if bbox is None and not isinstance(query, np.ndarray):
            return self.extract(os.fspath(query))
        return self.pipeline.features_from_image(self.query_image(query, bbox))

    def query_words(self, features: LocalFeatures) -> np.ndarray:
        """(n, k) word ids of the query features, k = the pipeline's query assignments."""
        words = self.vocabulary.quantize(self._descriptors(features), k=self.pipeline.query_assignments,
                                         beam=self.pipeline.beam)
        return words.reshape(len(features), -1)

    def scores(self, features: LocalFeatures) -> np.ndarray:
        """(n_images,) float32 tf-idf cosine similarity of the query with every image."""
        if len(features) == 0:
            return np.zeros(len(self), np.float32)
        return self.inverted_file.scores(self.query_words(features))

    def rank(self, features: LocalFeatures, top_k: int | None = None, n_jobs: int = 1) -> list[RankedImage]:
        """The best ``top_k`` images (None: all) for a query's features, through every pipeline stage.

        Initial tf-idf ranking, then (per the pipeline) spatial re-ranking of the
        top candidates and query expansion with the verified ones.
        """
        pipeline = self.pipeline
        words = self.query_words(features)
        query_vector = self.inverted_file.query_vector(words)
        signatures = None
        if pipeline.hamming is not None:
            descriptors = np.repeat(self._descriptors(features), words.shape[1], axis=0)
            signatures = self.hamming.signatures(descriptors, words.ravel()).reshape(words.shape)
            scores = hamming_scores(self.inverted_file, words, signatures, pipeline.hamming)
        else:
            scores = self.inverted_file.vector_scores(*query_vector)
        wanted = len(self) if top_k is None else min(top_k, len(self))
        head = max(wanted, pipeline.verification.top_k if pipeline.verification else 0)
        ranking = [RankedImage(int(i), float(scores[i])) for i in top_indices(scores, head)]
        if pipeline.window_search:
            ranking = self._window_rerank(query_vector, ranking, pipeline.window_search)
        if pipeline.verification is not None:
            ranking = spatial_rerank(features.keypoints, words, ranking, self.images, pipeline.verification,
                                     n_jobs=n_jobs, query_signatures=signatures,
                                     hamming_threshold=pipeline.hamming.threshold if pipeline.hamming else 0)
        if pipeline.expansion is not None and pipeline.hamming is not None:
            ranking = self._hamming_expansion(ranking, words, signatures, wanted)
        elif pipeline.expansion is not None:
            ranking = expand_and_requery(
                ranking, query_vector, lambda slot: self.inverted_file.query_vector(self.images.features(slot)[1]),
                lambda vector: self.inverted_file.vector_scores(*vector), self.vocabulary.n_words,
                pipeline.expansion.max_results, pipeline.expansion.alpha, wanted)
        return ranking[:wanted]

    def _hamming_expansion(self, ranking: list[RankedImage], words: np.ndarray,
                           signatures: np.ndarray, limit: int) -> list[RankedImage]:
        """Query expansion in Hamming-embedding space: the query's features plus the inlier
        features of up to ``max_results`` verified images, searched again; verified stay on top."""
        verified = [e for e in ranking if e.verified][:self.pipeline.expansion.max_results]
        if not verified:
            return ranking
        all_words, all_signatures = [words.reshape(-1, 1)], [signatures.reshape(-1, 1)]
        for entry in verified:
            inliers = np.unique(entry.matches[:, 1])
            all_words.append(self.images.features(entry.slot)[1][inliers].reshape(-1, 1))
            all_signatures.append(self.images.feature_signatures(entry.slot)[inliers].reshape(-1, 1))
        scores = hamming_scores(self.inverted_file, np.concatenate(all_words), np.concatenate(all_signatures),
                                self.pipeline.hamming)
        return verified_first(ranking, scores, limit)

    def _window_rerank(self, query_vector, ranking: list[RankedImage], top: int) -> list[RankedImage]:
        """BLCF local search: the top ``top`` re-scored by their best window, re-sorted."""
        idf = self.inverted_file.idf
        head = [RankedImage(e.slot, max(e.score, best_window_score(*query_vector, idf, *self.images.features(e.slot))))
                for e in ranking[:top]]
        head.sort(key=lambda e: -e.score)
        return head + ranking[top:]

    def search(self, query, top_k: int | None = None, bbox: tuple | None = None,
               n_jobs: int = 1) -> list[SearchResult]:
        """Rank the collection by similarity to ``query``.

        Args:
            query: image path, (h, w[, 3]) uint8 array, or LocalFeatures.
            top_k: return only the best ``top_k`` (default: the whole collection).
            bbox: optional (x0, y0, x1, y1) query region.
            n_jobs: threads for spatial verification.

        Returns:
            results, best first (verified ones carry inliers and homography);
            empty, with a warning, when the query has no features.
        """
        features = self.query_features(query, bbox)
        if len(features) == 0 or len(self) == 0:
            warnings.warn(f"query {query if isinstance(query, (str, os.PathLike)) else ''} has no "
                          f"local features or the index is empty; returning no results", stacklevel=2)
            return []
        with self._lock.reading():
            return [SearchResult(self.images.names[e.slot], e.score, e.slot, e.inliers, e.homography, e.matches)
                    for e in self.rank(features, top_k, n_jobs=n_jobs)]

    def save(self, directory: str) -> None:
        """Atomically save the whole index (vocabulary included) as a directory."""
        vocab_meta, vocab_arrays = self.vocabulary.state_dict()
        ivf_meta, ivf_arrays = self.inverted_file.state_dict()
        store_meta, store_arrays = self.images.state_dict()
        meta = {"pipeline": self.pipeline.to_dict(), "vocabulary": vocab_meta,
                "inverted_file": ivf_meta, "images": store_meta}
        arrays = {**_prefixed("vocabulary", vocab_arrays), **_prefixed("inverted_file", ivf_arrays),
                  **_prefixed("images", store_arrays)}
        for name, part in (("whitening", self.whitening), ("hamming", self.hamming)):
            meta[name] = None
            if part is not None:
                meta[name], part_arrays = part.state_dict()
                arrays.update(_prefixed(name, part_arrays))
        save_arrays(directory, INDEX_FORMAT, INDEX_VERSION, meta, arrays)

    @classmethod
    def load(cls, directory: str, cache_dir: str | None = None, verify: bool = True,
             mmap: bool = False) -> "RetrievalIndex":
        """Load an index saved by ``save`` (IndexFormatError naming the problem if unusable)."""
        meta, arrays = load_arrays(directory, INDEX_FORMAT, INDEX_VERSION, verify=verify, mmap=mmap)
        try:
            pipeline = Pipeline.from_dict(meta["pipeline"])
            vocabulary = VocabularyTree.from_state_dict(meta["vocabulary"], _unprefixed("vocabulary", arrays))
            inverted = InvertedFile.from_state_dict(meta["inverted_file"], _unprefixed("inverted_file", arrays))
            images = ImageStore.from_state_dict(meta["images"], _unprefixed("images", arrays))
            whitening = PCAWhitening.from_state_dict(meta["whitening"], _unprefixed("whitening", arrays)) \
                if meta.get("whitening") else None
            hamming = HammingEmbedding.from_state_dict(meta["hamming"], _unprefixed("hamming", arrays)) \
                if meta.get("hamming") else None
            index = cls(vocabulary, pipeline, cache_dir, whitening, hamming)
        except (ValueError, KeyError, TypeError) as exc:
            raise IndexFormatError(f"{directory}: invalid index ({exc.__class__.__name__}: {exc})") from exc
        if inverted.n_images != len(images) or inverted.n_words != vocabulary.n_words:
            raise IndexFormatError(f"{directory}: inverted file, image store and vocabulary disagree")
        index.inverted_file, index.images = inverted, images
        return index


def load_index(directory: str, cache_dir: str | None = None, verify: bool = True, mmap: bool = False):
    """Load a saved index of either kind (RetrievalIndex or CNN GlobalIndex), by its manifest.

    ``mmap`` memory-maps the postings and per-image arrays of a RetrievalIndex (a
    large index opens in well under a second; pair it with ``verify=False`` to skip
    the checksums, which read every byte). Shapes, dtypes and posting bounds are
    checked either way.
    """
    from cnn.global_index import INDEX_FORMAT as GLOBAL_FORMAT, GlobalIndex
    manifest = read_manifest(directory)
    if manifest.get("format") == GLOBAL_FORMAT:
        return GlobalIndex.load(directory, cache_dir=cache_dir, verify=verify)
    return RetrievalIndex.load(directory, cache_dir=cache_dir, verify=verify, mmap=mmap)
