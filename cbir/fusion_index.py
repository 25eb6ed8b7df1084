"""A fusion index: a local-feature index and a global-descriptor index of the same images,
searched together and their rankings fused (``index.rank_fusion``).

SIFT and CNN descriptors fail on different images (``sift-he`` leads on Holidays,
``rmac`` on UKBench); verified SIFT matches first, then reciprocal-rank fusion of
both rankings, beat either one alone on both sets (benchmarks/RESULTS.md, "Ranking
refinement"). Both parts hold the same names in the same slots.

With ``FusionConfig.verified_edges``, every added image is also verified against the
collection by the local part, and the pairs found join their images in the global
part's diffusion graph (``index.verified_pairs``): the CNN ranking then reaches the
images that SIFT geometry links to its neighbours.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from tqdm.auto import tqdm

from bovw.extraction import ExtractionReport
from cbir.global_index import GlobalIndex
from cbir.pipelines import FusionBuild, Pipeline
from cbir.retrieval_index import RetrievalIndex
from cbir.searchable import SearchableIndex, name_map, part_arrays
from index.collection_graph import CollectionGraph
from index.persistence import IndexFormatError
from index.rank_fusion import fuse_rankings
from index.reranking import RankedImage
from index.search_options import FusionConfig, SearchOptions
from index.verified_pairs import VerifiedPairs


@dataclass
class FusionQuery:
    """A query prepared for both parts of a fusion index."""

    local: object
    dense: object


class FusionIndex(SearchableIndex):
    """Images searchable by local features and by a global descriptor at once.

    Args:
        pipeline: a fusion pipeline (``fusion``) or its name.
        local: an index built like the pipeline's local part (e.g. ``sift-he``), empty or
            holding the same images as ``dense``.
        dense: an index built like its global part (e.g. ``rmac-diffusion``).
        cache_dir: feature cache folder.
        verified: the verified image pairs (slots of the parts), kept when the pipeline's
            ``verified_edges`` is set.
    """

    FORMAT = "cbir-fusion-index"
    KIND = "fusion"
    QUERY_TYPE = FusionQuery

    def __init__(self, pipeline: Pipeline | str, local: RetrievalIndex, dense: GlobalIndex,
                 cache_dir: str | None = None, verified: VerifiedPairs | None = None):
        super().__init__(pipeline, cache_dir)
        parts = self.pipeline.search.fusion
        if not (local.serves(parts.local) and dense.serves(parts.dense)):
            raise ValueError(f"the parts are not built like pipeline {self.pipeline.name!r}'s "
                             f"({parts.local} and {parts.dense})")
        if parts.verified_edges and local.search_options(parts.local).verification is None:
            raise ValueError(f"verified edges need a local pipeline that verifies ({parts.local!r} does not)")
        # as built (e.g. the vocabulary shape trained), like a RetrievalIndex records it
        self.pipeline = dataclasses.replace(self.pipeline, build=FusionBuild(local.pipeline.build, dense.pipeline.build))
        self.local, self.dense = local, dense
        self.names = local.names  # the same slots in both parts
        self.verified = verified if verified is not None else VerifiedPairs()
        self._check_parts("the parts")

    def _comparable_build(self, build):
        if not isinstance(build, FusionBuild):
            return build
        return FusionBuild(self.local._comparable_build(build.local), self.dense._comparable_build(build.dense))

    def _check_parts(self, where: str) -> None:
        if [self.local.names[i] for i in range(len(self.local))] != \
                [self.dense.names[i] for i in range(len(self.dense))]:
            raise ValueError(f"{where} hold different images")

    # ---- building -----------------------------------------------------------------------------

    def add_images(self, paths: Sequence[str], names: Sequence[str] | None = None, n_jobs: int = 1,
                   progress: bool | None = None) -> ExtractionReport:
        """Extract and index image files in both parts; an image either part cannot use is skipped
        by both. The report counts the local part's extractions and every skipped file once.
        With ``verified_edges``, each added image is then verified against the collection."""
        paths = [str(p) for p in paths]
        name_of = name_map(paths, names if names is not None or self.root is None else
                           [self.name_for(p) for p in paths])
        names = [name_of[p] for p in paths]
        report = self.local.add_images(paths, names, n_jobs, progress)
        dense_report = self.dense.add_images(paths, names, n_jobs, progress)
        reasons = dict(report.skipped)
        reasons.update((path, reason) for path, reason in dense_report.skipped if path not in reasons)
        one_part = [name for name in {name_of[p] for p in reasons} if (name in self.local) != (name in self.dense)]
        self.local.remove([n for n in one_part if n in self.local])
        self.dense.remove([n for n in one_part if n in self.dense])
        report.skipped = list(reasons.items())
        threshold = self.pipeline.search.fusion.verified_edges
        added = [(path, name_of[path]) for path in dict.fromkeys(paths)
                 if path not in reasons and name_of[path] in self.names]
        if threshold and added:
            self._verify(added, threshold, n_jobs, progress)
        return report

    def _verify(self, added: list[tuple[str, str]], threshold: int, n_jobs: int, progress: bool | None) -> None:
        """Query the local part with each (path, name) added and keep its verified pairs."""
        options = dataclasses.replace(self.local.search_options(self.pipeline.search.fusion.local), expansion=None)
        pairs, inliers = [], []
        for path, name in tqdm(added, desc="verified pairs", unit="img",
                               disable=None if progress is None else not progress):
            slot = self.names.slots([name])[0]
            for result in self.local.search(path, top_k=options.shortlist, options=options, n_jobs=n_jobs):
                if result.inliers is not None and result.inliers >= threshold and result.slot != slot:
                    pairs.append((slot, result.slot))
                    inliers.append(result.inliers)
        with self._lock.writing():  # fusion searches build the graph under the read lock
            self.verified.add(np.asarray(pairs, np.int64).reshape(-1, 2), np.asarray(inliers, np.int32))
            self.dense.graph = None

    def remove(self, names: Iterable[str]) -> None:
        """Remove images by name from both parts (KeyError naming an unknown one)."""
        names = list(names)
        with self._lock.writing():  # no fusion search sees the parts and the pairs disagree
            slots, n = self.names.slots(names), len(self)
            self.local.remove(names)
            self.dense.remove(names)
            self.verified.remove_slots(slots, n)

    def consolidate(self) -> None:
        self.local.consolidate()
        self.dense.consolidate()

    def _pending(self) -> bool:
        return False  # each part joins its own pending work

    # ---- searching ----------------------------------------------------------------------------

    def prepare_query(self, query, box=None, options: SearchOptions | str | None = None) -> FusionQuery:
        """The query extracted for both parts."""
        return FusionQuery(self.local.prepare_query(query, box), self.dense.prepare_query(query, box))

    def _is_empty_query(self, prepared: FusionQuery) -> bool:
        return False  # the global part ranks every query

    def _rank(self, prepared: FusionQuery, options: SearchOptions, top_k: int | None, n_jobs: int):
        config = options.fusion
        local = [] if self.local._is_empty_query(prepared.local) else \
            self.local.search(prepared.local, options=config.local, n_jobs=n_jobs)
        dense = self.dense.search(prepared.dense, options=self._dense_options(config))
        return fuse_rankings(*([RankedImage(r.slot, r.score, r.inliers, r.homography, r.matches) for r in ranking]
                               for ranking in (local, dense)), len(self), config)[:top_k]

    def _dense_options(self, config: FusionConfig) -> SearchOptions:
        """The global part's search options; with verified edges, its diffusion graph (built now if
        missing) joins the verified pairs."""
        options = self.dense.search_options(config.dense)
        if not (config.verified_edges and options.diffusion is not None):
            return options
        kept = self.pipeline.search.fusion.verified_edges
        if not kept or config.verified_edges < kept:
            raise ValueError(f"verified edges of >= {config.verified_edges} inliers: this index kept "
                             + (f"only pairs of >= {kept}" if kept else "no verified pairs (build it as fusion-ve)"))
        options = dataclasses.replace(options, diffusion=dataclasses.replace(
            options.diffusion, verified_edges=config.verified_edges))
        with self.dense._reading(), self.dense._graph_lock:
            if self.dense.graph is None or self.dense.graph.key != options.diffusion.graph_key:
                self.dense.graph = CollectionGraph.build(self.dense.dense, options.diffusion, self.verified)
        return options

    # ---- persistence and facts ----------------------------------------------------------------

    def save(self, directory: str) -> None:
        """Atomically save the index; with the diffusion graph its pipeline searches with (built now if missing)."""
        if len(self):
            with self._reading():
                options = self._dense_options(self.pipeline.search.fusion)
                if options.diffusion is not None:
                    with self.dense._reading():
                        self.dense._graph_for(options.diffusion)
        super().save(directory)

    def _parts(self) -> dict:
        return {"local": self.local, "dense": self.dense, "verified": self.verified}

    @classmethod
    def _from_parts(cls, pipeline: Pipeline, meta: dict, arrays: dict, cache_dir: str | None) -> "FusionIndex":
        verified = VerifiedPairs.from_state_dict(meta["verified"], part_arrays(arrays, "verified")) \
            if meta.get("verified") else None
        return cls(pipeline, RetrievalIndex.from_state_dict(meta["local"], part_arrays(arrays, "local"), cache_dir),
                   GlobalIndex.from_state_dict(meta["dense"], part_arrays(arrays, "dense"), cache_dir), cache_dir,
                   verified)

    @classmethod
    def from_state_dict(cls, meta: dict, arrays: dict, cache_dir: str | None = None) -> "FusionIndex":
        index = super().from_state_dict(meta, arrays, cache_dir)
        index.names = index.local.names
        return index

    def _check_sizes(self, directory: str) -> None:
        self.local._check_sizes(f"{directory} (local part)")
        self.dense._check_sizes(f"{directory} (global part)")
        try:
            self._check_parts(directory)
        except ValueError as exc:
            raise IndexFormatError(str(exc)) from None
        if len(self.verified) and self.verified.pairs.max() >= len(self):
            raise IndexFormatError(f"{directory}: verified pairs name images the index does not hold")
        graph = self.dense.graph
        if graph is not None and graph.verified_edges and \
                len(self.verified.selected(graph.verified_edges)) != graph.edges:
            raise IndexFormatError(f"{directory}: the diffusion graph was built from other verified pairs")

    def _info(self) -> dict:
        return {"local_part": {"pipeline": self.local.pipeline.name, **self.local._info()},
                "dense_part": {"pipeline": self.dense.pipeline.name, **self.dense._info()},
                "verified_pairs": len(self.verified)}
