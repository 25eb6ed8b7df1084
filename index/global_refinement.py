"""Ranking refinement for global descriptors: query expansion and diffusion.

Pure functions of the query, the collection's descriptors and its graph;
``index.ranking.rank_global`` composes them.
"""
from __future__ import annotations

import numpy as np

from index.collection_graph import CollectionGraph
from index.dense_index import DenseIndex
from index.diffusion import diffuse, diffuse_offline, pool_to_images, query_seed
from index.kernels import top_indices
from index.search_options import DiffusionConfig, ExpansionConfig


def expand_descriptor(descriptor: np.ndarray, dense: DenseIndex, config: ExpansionConfig) -> np.ndarray:
    """Average (alpha = 0) or alpha-weighted query expansion of a global descriptor.

    The query (weight 1) and its ``max_results`` most similar images, each weighted 1 (AQE) or
    ``max(similarity, 0) ** alpha`` (alpha-QE, Radenovic et al. 2018), summed and L2-normalised.

    Args:
        descriptor: (d,) float32 unit query descriptor.
        dense: the collection's descriptors.
        config: how many results and how they are weighted.

    Returns:
        (d,) float32 unit expanded descriptor.
    """
    scores = dense.scores(descriptor)
    top = top_indices(scores, config.max_results)
    weights = np.ones(len(top), np.float32) if config.alpha == 0 else np.maximum(scores[top], 0) ** config.alpha
    expanded = descriptor + weights @ dense.vectors_of(top)
    norm = np.linalg.norm(expanded)
    return (expanded / norm if norm > 0 else expanded).astype(np.float32)


def diffusion_scores(scores: np.ndarray, rows: np.ndarray, dense: DenseIndex, graph: CollectionGraph,
                     config: DiffusionConfig) -> np.ndarray:
    """Per-image diffusion scores of a query on the collection's graph.

    The query enters through its ``query_k`` most similar nodes (seeds ``similarity ** gamma``;
    regional graphs: the nearest regions of each query row, summed); scores solve
    ``(I - alpha S) f = y``, restricted to the images of the descriptor shortlist when
    ``config.shortlist`` is set, or read from the graph's precomputed rows when ``config.offline``
    is (computed at the first such call); regional node scores are pooled to images.

    Args:
        scores: (n,) float32 descriptor similarities of the query to every image.
        rows: (r, d) float32 query rows (R-MAC regions, or the descriptor alone), for regional graphs.
        dense: the collection's descriptors and regions.
        graph: the collection's graph (built with ``config``'s graph settings).
        config: the diffusion settings.

    Returns:
        (n,) float32, higher is better; 0 for images the diffusion did not reach (or outside the shortlist).
    """
    node_scores = np.asarray(rows, np.float32) @ dense.regions.T if graph.regional else scores
    nodes = None
    if config.shortlist:
        nodes = graph.image_nodes(top_indices(scores, config.shortlist))
    seed = query_seed(node_scores, config.query_k, graph.graph.gamma)
    if config.offline:
        f = diffuse_offline(graph.offline_rows(config), seed)
    else:
        f = diffuse(graph.graph, seed, config.alpha, config.iterations, shortlist=nodes)
    if graph.regional:
        return pool_to_images(f, graph.node_image, graph.n_images, config.pooling)
    return f
