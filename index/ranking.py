"""The ranking sequence: score, shortlist, re-rank, expand, as pure functions of the index data.

A searchable index prepares the query once (decoding, extraction, whitening,
quantization, signatures) and calls one of these with its stores and the
search options; nothing here calls back into the index.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from index.collection_graph import CollectionGraph
from index.dense_index import DenseIndex
from index.global_refinement import diffusion_scores, expand_descriptor
from index.image_store import ImageStore
from index.inverted_file import InvertedFile
from index.kernels import top_indices
from index.match_kernel import hamming_scores
from index.reranking import RankedImage, bow_expansion, hamming_expansion, spatial_rerank
from index.search_options import SearchOptions
from index.window_search import window_rerank


@dataclass
class LocalQuery:
    """A query prepared for a local-feature index.

    Attributes:
        keypoints: (n, 4) float32 x, y, scale, angle, in pixels of the query image as extracted.
        words: (n, k) int32 word ids, k = the options' query assignments.
        signatures: (n, k) uint64 Hamming signatures relative to each word, or None.
    """

    keypoints: np.ndarray
    words: np.ndarray
    signatures: np.ndarray | None = None


def shortlist(scores: np.ndarray, count: int) -> list[RankedImage]:
    """The ``count`` best images of ``scores`` (n_images,), best first (ties: lower slot first)."""
    return [RankedImage(int(i), float(scores[i])) for i in top_indices(scores, count)]


def local_scores(query: LocalQuery, inverted: InvertedFile, options: SearchOptions) -> np.ndarray:
    """(n_images,) float32 first-stage scores of a local-feature query: tf-idf cosine, or
    Hamming-embedding scores when the query carries signatures."""
    if query.signatures is not None:
        return hamming_scores(inverted, query.words, query.signatures, options.hamming)
    return inverted.vector_scores(*inverted.query_vector(query.words))


def rank_local(query: LocalQuery, inverted: InvertedFile, images: ImageStore, options: SearchOptions,
               top_k: int | None = None, n_jobs: int = 1) -> list[RankedImage]:
    """Rank a local-feature collection: tf-idf cosine or Hamming-embedding scores, then (per
    ``options``) window search, spatial verification of the shortlist, and query expansion.

    Args:
        query: the prepared query.
        inverted: the collection's inverted file.
        images: the collection's per-image keypoints, words and signatures.
        options: how to rank.
        top_k: results wanted (None: every image).
        n_jobs: threads for spatial verification.

    Returns:
        at most ``top_k`` entries, best first.
    """
    wanted = inverted.n_images if top_k is None else min(top_k, inverted.n_images)
    ranking = shortlist(local_scores(query, inverted, options), max(wanted, options.shortlist))
    return rerank_local(query, ranking, inverted, images, options, wanted, n_jobs)


def rerank_local(query: LocalQuery, ranking: list[RankedImage], inverted: InvertedFile, images: ImageStore,
                 options: SearchOptions, wanted: int, n_jobs: int = 1) -> list[RankedImage]:
    """The steps of ``rank_local`` after the shortlist: window search, spatial verification, query
    expansion, cut to ``wanted`` entries.

    ``inverted`` and ``images`` may be views over the shards of a collection
    (``index.shard_views``), as ``cbir.sharded_index`` passes them.
    """
    vector = inverted.query_vector(query.words)
    if options.window_search:
        ranking = window_rerank(ranking, vector, inverted.idf, images, options.window_search)
    if options.verification is not None:
        threshold = options.hamming.threshold if options.hamming is not None else 0
        ranking = spatial_rerank(query.keypoints, query.words, ranking, images, options.verification,
                                 n_jobs=n_jobs, query_signatures=query.signatures, hamming_threshold=threshold,
                                 inverted=inverted)
    if options.expansion is not None and query.signatures is not None:
        ranking = hamming_expansion(ranking, query.words, query.signatures, inverted, images, options.hamming,
                                    options.expansion, wanted)
    elif options.expansion is not None:
        ranking = bow_expansion(ranking, vector, inverted, images, options.expansion, wanted)
    return ranking[:wanted]


def rank_global(descriptor: np.ndarray, rows: np.ndarray, dense: DenseIndex, options: SearchOptions,
                top_k: int | None = None, graph: CollectionGraph | None = None) -> list[RankedImage]:
    """Rank a collection of global descriptors by inner product, after (per ``options``) query
    expansion; then rank by diffusion on the collection's graph, and re-rank the top
    ``region_rerank`` by the best match of the query with each image's regions.

    Args:
        descriptor: (d,) float32 unit query descriptor.
        rows: (r, d) float32 query rows (R-MAC regions), used by regional diffusion.
        dense: the collection's descriptors (and regions).
        options: how to rank.
        top_k: results wanted (None: every image).
        graph: the collection's graph, built with ``options.diffusion`` (needed exactly when it is set).

    Returns:
        at most ``top_k`` entries, best first; with diffusion, images it did not reach follow in
        descriptor order with score 0.
    """
    if options.expansion is not None:
        descriptor = expand_descriptor(descriptor, dense, options.expansion)
    scores = dense.scores(descriptor)
    if options.diffusion is not None:
        diffused = diffusion_scores(scores, rows, dense, graph, options.diffusion)
        order = np.lexsort((-scores, -diffused))  # stable: ties keep the lower slot first
        scores = diffused
    else:
        order = top_indices(scores, None if top_k is None else max(top_k, options.region_rerank))
    if options.region_rerank:
        head = order[:options.region_rerank]
        region = dense.region_scores(descriptor, head)
        rerank = np.lexsort((np.arange(len(head)), -region))
        scores = scores.copy()
        scores[head] = region
        order = np.r_[head[rerank], order[options.region_rerank:]]
    return [RankedImage(int(i), float(scores[i])) for i in order[:top_k]]


def best_per_image(rankings: list[list[RankedImage]], top_k: int | None = None) -> list[RankedImage]:
    """One ranking from several of the same collection (one per view of a query, e.g. its
    rotations): each image once, as its best-scored entry, best first (ties: lower slot first).

    Every ranking must be ordered by score and hold the ``top_k`` best images of its view (or
    all of them): an image among the ``top_k`` best of the maximum is among the ``top_k`` best
    of the view it scores best in, so the cut is exact. (Region re-ranking and diffusion order
    their rankings otherwise: ``check_search_options`` refuses rotations with them.)
    """
    best: dict[int, RankedImage] = {}
    for ranking in rankings:
        for entry in ranking:
            if entry.slot not in best or entry.score > best[entry.slot].score:
                best[entry.slot] = entry
    merged = sorted(best.values(), key=lambda entry: (-entry.score, entry.slot))
    return merged if top_k is None else merged[:top_k]
