"""The CNN global-descriptor index: one whitened vector per image (plus R-MAC regions for
``rmac-rr``), searched by inner product, saved as one directory. torch is imported only
when images are described."""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from cbir.pipelines import Pipeline
from cbir.searchable import SearchableIndex, part_arrays
from cnn.global_descriptors import embed, raw_vectors
from cnn.learned_model import LearnedHead
from cnn.options import CHANNELS
from cnn.whitening import PCAWhitening
from index.collection_graph import CollectionGraph
from index.dense_index import DenseIndex
from index.persistence import IndexFormatError
from index.ranking import rank_global
from index.search_options import DiffusionConfig, SearchOptions

logger = logging.getLogger(__name__)

#: Smallest query side in pixels (the head map has stride 32).
MIN_QUERY_SIDE = 32


@dataclass
class GlobalQuery:
    """A query prepared for a global index: its descriptor (k,) and whitened rows (r, k)
    (R-MAC regions; one row for single-vector methods)."""

    descriptor: np.ndarray
    rows: np.ndarray


class GlobalIndex(SearchableIndex):
    """Images searchable by a CNN global descriptor.

    Diffusion searches use a kNN graph of the collection, built at the first search
    that asks for it (or when an index whose pipeline diffuses is saved), saved with
    the index, and dropped whenever images are added or removed.

    Args:
        pipeline: a global-descriptor pipeline (``gem``, ``rmac``...) or its name.
        whitening: learned PCA whitening (None: L2 only).
        cache_dir: feature-map cache folder.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``, for extraction.
        head: the trained head of a pipeline with a ``learned`` build (``gem-ft``), from a model
            (``LearnedModel.inference_head()``); saved with the index, applied without torch. A head
            with tuned backbone weights (``cbir train --from-block``) brings them: images are then
            described through the tuned network (cached apart from the ImageNet one's maps).
    """

    FORMAT = "cbir-global-index"
    KIND = "global"
    QUERY_TYPE = GlobalQuery

    def __init__(self, pipeline: Pipeline | str, whitening: PCAWhitening | None = None,
                 cache_dir: str | None = None, device: str = "auto", head: LearnedHead | None = None):
        super().__init__(pipeline, cache_dir)
        learned = self.pipeline.build.learned
        if (head is None) != (learned is None):
            raise ValueError(f"pipeline {self.pipeline.name!r} needs a trained model (cbir train, then --model)"
                             if head is None else f"pipeline {self.pipeline.name!r} takes no trained model")
        if head is not None:
            if head.kind != learned:
                raise ValueError(f"pipeline {self.pipeline.name!r} needs a {learned} head; the model holds a {head.kind} one")
            if head.backbone != self.pipeline.build.backbone.key:
                raise ValueError(f"the model was trained on backbone {head.backbone!r}; pipeline "
                                 f"{self.pipeline.name!r} uses {self.pipeline.build.backbone.key!r}")
            if whitening is not None:
                raise ValueError("a trained head brings its own whitening (its FC layer); give no other")
        self.whitening = whitening
        self.head = head
        self.device = device
        shaper = head if head is not None else whitening
        self.dense = DenseIndex((shaper.output_dim if shaper is not None else None) or CHANNELS["global"])
        self.graph: CollectionGraph | None = None
        self._graph_lock = threading.Lock()
        self._extractor = None

    @property
    def extractor(self):
        """The head maps at the pipeline's scales (``cnn.feature_maps.MultiScaleMaps``, built on
        first use: it imports torch), through the head's tuned backbone when it has one."""
        if self._extractor is None:
            from cnn.feature_maps import MultiScaleMaps
            build = self.pipeline.build
            tuned = self.head.tuned if self.head is not None else None
            options = build.backbone if tuned is None else tuned.options(build.backbone)
            self._extractor = MultiScaleMaps(options, build.scales, self.cache_dir, self.device)
        return self._extractor

    def describe(self, maps: dict) -> GlobalQuery:
        """Descriptor of an image from its head maps ({'global': [(C, H, W) per scale]})."""
        if self.head is not None:
            return GlobalQuery(*self.head.describe(maps["global"]))
        config = self.pipeline.build.descriptor
        return GlobalQuery(*embed(raw_vectors(maps["global"], config), self.whitening, config))

    # ---- building -----------------------------------------------------------------------------

    def empty_like(self) -> "GlobalIndex":
        """An empty index with this one's pipeline, learned parts (shared, not copied), cache and root."""
        index = GlobalIndex(self.pipeline, self.whitening, self.cache_dir, self.device, self.head)
        index.root = self.root
        return index

    def _learned_parts(self) -> dict:
        return {"whitening": self.whitening, "head": self.head}

    def _join_stores(self, indexes: Sequence["GlobalIndex"]) -> None:
        self.dense = DenseIndex.concatenate([index.dense for index in indexes])

    def _feature_source(self):
        return self.extractor, None, "threads"

    def _item_bytes(self, item: dict) -> int:
        return sum(m.nbytes for m in item["global"])

    def _add_batch(self, names: list[str], items: list[dict], n_jobs: int) -> None:
        described = [self.describe(maps) for maps in items]
        regions = [d.rows for d in described] if self.pipeline.build.regions else None
        with self._lock.writing():
            self.names.add(names)
            self.dense.add(np.stack([d.descriptor for d in described]), regions)
            self.graph = None

    def _remove_slots(self, slots: list[int]) -> None:
        self.dense.remove(slots)
        self.graph = None

    def _pending(self) -> bool:
        return self.dense.pending

    def _consolidate(self) -> None:
        self.dense.consolidate()

    # ---- searching ----------------------------------------------------------------------------

    def prepare_query(self, query, box=None, options: SearchOptions | str | None = None) -> GlobalQuery:
        """Describe a query image path or RGB array, optionally cropped to ``box``; a path without
        a box is looked up in the feature cache (never written to by a query)."""
        if box is None and not isinstance(query, np.ndarray):
            return self.describe(self.extractor(os.fspath(query), store=False))
        image = self.query_image(query, box, color=True)
        if min(image.shape[:2]) < MIN_QUERY_SIDE:
            raise ValueError(f"query region of {image.shape[1]}x{image.shape[0]} pixels is smaller than "
                             f"{MIN_QUERY_SIDE} pixels")
        return self.describe(self.extractor.of_image(image))

    def _is_empty_query(self, prepared: GlobalQuery) -> bool:
        return False

    def _rank(self, prepared: GlobalQuery, options: SearchOptions, top_k: int | None, n_jobs: int):
        graph = self._graph_for(options.diffusion) if options.diffusion is not None else None
        return rank_global(prepared.descriptor, prepared.rows, self.dense, options, top_k, graph)

    def _graph_for(self, config: DiffusionConfig) -> CollectionGraph:
        """The collection's graph with ``config``'s graph settings, built now if the index has
        none or one built otherwise (call with the read lock held: the images cannot change)."""
        with self._graph_lock:
            if self.graph is None or self.graph.key != config.graph_key:
                logger.info("building the diffusion graph of %d images (k=%d, gamma=%g%s)", len(self), config.k,
                            config.gamma, ", regions" if config.regional else "")
                self.graph = CollectionGraph.build(self.dense, config)
            return self.graph

    def save(self, directory: str) -> None:
        """Atomically save the index; with the graph its pipeline's diffusion needs (built now if missing)."""
        if self.pipeline.search.diffusion is not None and len(self):
            with self._reading():
                self._graph_for(self.pipeline.search.diffusion)
        super().save(directory)

    # ---- persistence and facts ----------------------------------------------------------------

    def _parts(self) -> dict:
        return {"whitening": self.whitening, "head": self.head, "dense": self.dense, "graph": self.graph}

    @classmethod
    def _from_parts(cls, pipeline: Pipeline, meta: dict, arrays: dict, cache_dir: str | None) -> "GlobalIndex":
        whitening = PCAWhitening.from_state_dict(meta["whitening"], part_arrays(arrays, "whitening")) \
            if meta.get("whitening") else None
        head = LearnedHead.from_state_dict(meta["head"], part_arrays(arrays, "head")) if meta.get("head") else None
        index = cls(pipeline, whitening, cache_dir, head=head)
        if meta.get("dense"):  # format-1 saves of an index that never held an image have none
            index.dense = DenseIndex.from_state_dict(meta["dense"], part_arrays(arrays, "dense"))
        if meta.get("graph"):
            index.graph = CollectionGraph.from_state_dict(meta["graph"], part_arrays(arrays, "graph"))
        return index

    def _check_sizes(self, directory: str) -> None:
        if len(self.dense) != len(self.names):
            raise IndexFormatError(f"{directory}: descriptors and image names disagree")
        if self.graph is not None and (self.graph.n_images != len(self.names) or
                                       (self.graph.regional and self.graph.graph.n != len(self.dense.regions))):
            raise IndexFormatError(f"{directory}: the diffusion graph was built for another collection")

    def _info(self) -> dict:
        graph = None if self.graph is None else {
            "k": self.graph.k, "gamma": self.graph.graph.gamma, "regional": self.graph.regional,
            "nodes": self.graph.graph.n, "edges": int(self.graph.graph.affinity.nnz // 2)}
        return {"descriptor_dim": self.dense.dim, "regions": int(len(self.dense.regions)),
                "whitening_dim": self.whitening.output_dim if self.whitening is not None else None,
                "learned_head": None if self.head is None else {
                    "kind": self.head.kind, "p": None if self.head.p is None else round(self.head.p, 4),
                    "dim": self.head.output_dim, "model_id": self.head.model_id,
                    **({} if self.head.tuned is None else {"tuned_from_block": self.head.tuned.from_block})},
                "diffusion_graph": graph or "none (built by the first diffusion search)"}
