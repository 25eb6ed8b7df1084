"""The diffusion graph a global index keeps over its images, or over their regions.

Built from the index's descriptors (``index.diffusion.knn_graph``) when a search
first asks for diffusion, saved with the index, and dropped when images are added
or removed (the next diffusion search rebuilds it): a graph never describes
another collection than the one it ranks. A fusion index adds its verified image
pairs as edges (``verified_edges``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse

from index.dense_index import DenseIndex
from index.diffusion import (DiffusionGraph, csr_from_arrays, csr_to_arrays, graph_from_affinity, knn_graph,
                             offline_rows)
from index.search_options import DiffusionConfig
from index.verified_pairs import VerifiedPairs

STATE_VERSION = 1

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CollectionGraph:
    """A diffusion graph over a collection.

    Attributes:
        graph: the normalised kNN graph; its nodes are the images (global) or their regions.
        k: neighbours per node asked for (the graph's own ``k`` is smaller on tiny collections).
        regional: nodes are regions.
        node_image: (m,) int64 image slot of each node (``arange(n_images)`` when not regional).
        n_images: images of the collection it was built from.
        verified_edges: inliers of the verified pairs added as edges (0: a kNN graph alone).
        edges: verified pairs added.
        offline: precomputed diffusion rows, ``{(top, alpha, iterations): (m, m) csr_array}`` (at most
            one entry; see :meth:`offline_rows`).
    """

    graph: DiffusionGraph
    k: int
    regional: bool
    node_image: np.ndarray
    n_images: int
    verified_edges: int = 0
    edges: int = 0
    offline: dict = field(default_factory=dict, compare=False)

    @property
    def key(self) -> tuple:
        """(k, gamma, regional, verified_edges) as in ``DiffusionConfig.graph_key``."""
        return self.k, self.graph.gamma, self.regional, self.verified_edges

    @classmethod
    def build(cls, dense: DenseIndex, config: DiffusionConfig,
              verified: VerifiedPairs | None = None) -> "CollectionGraph":
        """The mutual kNN graph of ``dense``'s descriptors (or regions, per ``config.regional``), with
        the ``verified`` pairs of at least ``config.verified_edges`` inliers as edges of weight 1
        (ValueError when the config asks for them and there are none to give)."""
        if config.regional:
            vectors, node_image = dense.regions, np.repeat(np.arange(len(dense)), np.diff(dense.region_offsets))
        else:
            vectors, node_image = dense.vectors, np.arange(len(dense))
        graph, edges = knn_graph(vectors, k=config.k, gamma=config.gamma), 0
        if config.verified_edges:
            if verified is None:
                raise ValueError("verified-edge diffusion needs the verified image pairs that a fusion index "
                                 "keeps; this index has none")
            extra = verified.affinity(len(dense), config.verified_edges)
            graph, edges = graph_from_affinity(graph.affinity.maximum(extra), graph.k, graph.gamma), extra.nnz // 2
        return cls(graph, config.k, config.regional, node_image.astype(np.int64), len(dense),
                   config.verified_edges, edges)

    def image_nodes(self, slots: np.ndarray) -> np.ndarray:
        """(t,) int64 nodes of the given image slots."""
        return np.flatnonzero(np.isin(self.node_image, slots)) if self.regional else np.asarray(slots, np.int64)

    def offline_rows(self, config: DiffusionConfig) -> sparse.csr_array:
        """Every node's ``config.offline`` largest diffusion scores with ``config``'s alpha and
        iterations, computed at the first call (about n solves) and kept with the graph."""
        key = (config.offline, config.alpha, config.iterations)
        rows = self.offline.get(key)
        if rows is None:
            logger.info("precomputing offline diffusion rows of %d nodes (top %d)", self.graph.n, config.offline)
            rows = offline_rows(self.graph, config.alpha, config.iterations, config.offline)
            self.offline.clear()
            self.offline[key] = rows
        return rows

    def state_dict(self) -> tuple[dict, dict]:
        """(metadata, arrays) for persistence."""
        arrays = self.graph.to_arrays()
        meta = {"kind": "collection-graph", "version": STATE_VERSION, "k": self.k, "graph_k": self.graph.k, "gamma": self.graph.gamma,
                "regional": self.regional, "n_images": self.n_images, "verified_edges": self.verified_edges,
                "edges": self.edges, "offline": None}
        arrays = {**{name: value for name, value in arrays.items() if name not in ("k", "gamma")},
                  "node_image": self.node_image}
        for (top, alpha, iterations), rows in list(self.offline.items()):
            meta["offline"] = {"top": top, "alpha": alpha, "iterations": iterations}
            arrays.update({f"offline_{name}": value for name, value in csr_to_arrays(rows).items()})
        return meta, arrays

    @classmethod
    def from_state_dict(cls, meta: dict, arrays: dict) -> "CollectionGraph":
        """Rebuild from ``state_dict()`` output (ValueError when inconsistent)."""
        if meta.get("kind") != "collection-graph" or meta.get("version") != STATE_VERSION:
            raise ValueError(f"not a version-{STATE_VERSION} collection graph")
        graph = DiffusionGraph.from_arrays({**arrays, "k": np.array(meta["graph_k"]), "gamma": np.array(meta["gamma"])})
        node_image = np.asarray(arrays["node_image"], np.int64)
        n_images = int(meta["n_images"])
        if node_image.shape != (graph.n,) or (len(node_image) and (node_image.min() < 0 or node_image.max() >= n_images)):
            raise ValueError("collection graph arrays are inconsistent")
        offline = {}
        if meta.get("offline"):
            rows = csr_from_arrays({name[len("offline_"):]: value for name, value in arrays.items()
                                    if name.startswith("offline_")})
            if rows.shape != (graph.n, graph.n):
                raise ValueError("offline diffusion rows do not fit the collection graph")
            offline[(int(meta["offline"]["top"]), float(meta["offline"]["alpha"]),
                     int(meta["offline"]["iterations"]))] = rows
        return cls(graph, int(meta["k"]), bool(meta["regional"]), node_image, n_images,
                   int(meta.get("verified_edges", 0)), int(meta.get("edges", 0)), offline)
