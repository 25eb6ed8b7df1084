"""How to query an index: settings that may change from one search to the next.

How an index was *built* (features, vocabulary, embedding) is saved with it and
fixed for its life; ``SearchOptions`` only say how to rank it. Each named
pipeline brings its defaults; ``dataclasses.replace`` or the CLI override them
per call.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from bovw.hamming import HammingConfig
from index.asmk import AsmkConfig
from index.persistence import dataclass_from_dict
from index.spatial_verification import ESTIMATORS, VerificationConfig

#: Angles (degrees, counter-clockwise) a query image can be turned by before it is searched.
QUERY_ROTATIONS = (0, 90, 180, 270)


@dataclass(frozen=True)
class ExpansionConfig:
    """Query expansion: the query and its best results averaged into a new query.

    Local-feature indexes expand with their spatially verified results; global
    indexes with their top results by descriptor similarity.

    Attributes:
        max_results: results (best first) added to the query.
        alpha: 0 for average query expansion (Chum et al. 2007); > 0 weights each
            result by its similarity to the query to the power alpha (alpha-QE).
    """

    max_results: int = 50
    alpha: float = 0.0

    def __post_init__(self):
        if self.max_results < 1 or self.alpha < 0:
            raise ValueError("query expansion needs max_results >= 1 and alpha >= 0")


@dataclass(frozen=True)
class DiffusionConfig:
    """Diffusion on a kNN graph of the collection (Iscen et al. 2017). Global indexes.

    The graph (``k``, ``gamma``, ``regional``) is built from the index's vectors at
    the first search that needs it and saved with the index; the other fields only
    change how a query runs.

    Attributes:
        k: neighbours per node of the mutual kNN graph.
        gamma: affinities are similarities clipped at 0 to the power gamma.
        regional: graph nodes are the images' R-MAC regions (pooled back to images)
            instead of one descriptor per image.
        alpha: diffusion strength in (0, 1): scores solve (I - alpha S) f = y.
        query_k: database nodes the query enters the graph through (its nearest).
        iterations: conjugate-gradient iterations.
        shortlist: solve only over the query's top results by descriptor similarity
            (truncation; 0: the whole graph). The rest follows in descriptor order.
        pooling: regional graphs: image score = ``sum`` or ``max`` of its regions' scores.
        verified_edges: also join the images of every spatially verified pair with at least
            this many inliers (weight 1, as strong as a duplicate); 0: the kNN graph alone.
            Only indexes that hold verified pairs (the CNN part of a fusion index) have them.
        offline: precompute every node's diffusion from a unit seed and keep its ``offline``
            largest scores (Yang et al. 2019); a query then adds the rows of its seeds instead
            of solving (sub-millisecond at 10^4 images), after a precomputation of about n
            solves at the first such search, saved with the index. 0: solve per query.
    """

    k: int = 10
    gamma: float = 3.0
    regional: bool = False
    alpha: float = 0.5
    query_k: int = 3
    iterations: int = 20
    shortlist: int = 0
    pooling: str = "sum"
    verified_edges: int = 0
    offline: int = 0

    def __post_init__(self):
        if self.k < 1 or self.query_k < 1 or self.iterations < 1 or min(self.shortlist, self.verified_edges,
                                                                         self.offline) < 0:
            raise ValueError("diffusion needs k, query_k and iterations >= 1, shortlist, verified_edges and "
                             "offline >= 0")
        if self.offline and self.shortlist:
            raise ValueError("offline diffusion has no per-query solve to truncate: set offline or shortlist")
        if self.regional and self.verified_edges:
            raise ValueError("verified edges join images: they need a graph of images, not of regions")
        if not 0 < self.alpha < 1:
            raise ValueError(f"diffusion alpha must lie in (0, 1), got {self.alpha}")
        if self.pooling not in ("sum", "max"):
            raise ValueError(f"diffusion pooling must be 'sum' or 'max', got {self.pooling!r}")

    @property
    def graph_key(self) -> tuple:
        """What the graph depends on (a graph built with another key is rebuilt)."""
        return self.k, self.gamma, self.regional, self.verified_edges


@dataclass(frozen=True)
class FusionConfig:
    """Late fusion of a local-feature ranking with a global-descriptor ranking of the same images.

    Images whose spatial verification found at least ``verified_inliers`` inliers come
    first; every image is ordered by reciprocal-rank fusion,
    ``local_weight / (local_rank + rank_offset) + 1 / (global_rank + rank_offset)``
    (ranks from 0; an image missing from a ranking gets nothing from it).

    Attributes:
        local: pipeline whose search options rank the local part (built like it).
        dense: pipeline whose search options rank the global part.
        local_weight: weight of the local ranking.
        rank_offset: the constant c of reciprocal-rank fusion.
        verified_inliers: inliers that put an image first (0: no such rule).
        verified_edges: verify each added image against the collection (the local part's
            verification, its top results) and add the pairs with at least this many inliers
            as edges of the global part's diffusion graph (0: none). It costs one verified
            query per added image at indexing time.
    """

    local: str = "sift-he-sv-qe"
    dense: str = "rmac-diffusion"
    local_weight: float = 0.7
    rank_offset: float = 3.0
    verified_inliers: int = 10
    verified_edges: int = 0

    def __post_init__(self):
        if self.local_weight < 0 or self.rank_offset <= 0 or self.verified_inliers < 0 or self.verified_edges < 0:
            raise ValueError("fusion needs local_weight >= 0, rank_offset > 0, verified_inliers and "
                             "verified_edges >= 0")


@dataclass(frozen=True)
class SearchOptions:
    """Query-time settings of a search.

    Attributes:
        query_assignments: visual words per query descriptor (multiple assignment;
            1 = hard assignment). Local-feature indexes.
        hamming: Hamming-embedding matching (threshold, weights, burstiness); set
            exactly when the index stores signatures.
        window_search: re-rank this many top results by their best window of the
            word map (BLCF local search; 0: off).
        verification: spatial re-ranking of the top results, or None. Local-feature indexes.
        expansion: query expansion, or None (local-feature indexes: needs verification).
        region_rerank: re-rank this many top results by the best match between the
            query descriptor and each image's stored R-MAC regions (0: off). Global indexes.
        diffusion: diffusion on the collection's kNN graph, or None. Global indexes.
        fusion: how a fusion index combines its two rankings (set exactly for fusion indexes,
            and alone).
        asmk: ASMK* selectivity and verification filter; set exactly for indexes built with asmk.
        query_rotations: search the query image turned by each of these angles (degrees,
            counter-clockwise, of ``QUERY_ROTATIONS``) and give each image its best score among
            them (e.g. (0, 90, 270) for photos shot sideways whose orientation was lost: an
            upright network's conv features are not rotation-invariant). Costs one search per angle.
    """

    query_assignments: int = 1
    hamming: HammingConfig | None = None
    window_search: int = 0
    verification: VerificationConfig | None = None
    expansion: ExpansionConfig | None = None
    region_rerank: int = 0
    diffusion: DiffusionConfig | None = None
    fusion: FusionConfig | None = None
    asmk: AsmkConfig | None = None
    query_rotations: tuple[int, ...] = (0,)

    def __post_init__(self):
        rotations = tuple(self.query_rotations)
        if not rotations or len(set(rotations)) < len(rotations) or not set(rotations) <= set(QUERY_ROTATIONS):
            raise ValueError(f"query rotations are distinct angles of {', '.join(map(str, QUERY_ROTATIONS))} "
                             f"(got {', '.join(map(str, rotations)) or 'none'})")
        object.__setattr__(self, "query_rotations", tuple(int(angle) for angle in rotations))
        if self.query_assignments < 1:
            raise ValueError("query_assignments must be at least 1")
        if self.window_search < 0 or self.region_rerank < 0:
            raise ValueError("window_search and region_rerank count results: they cannot be negative")
        if self.verification is not None and self.verification.estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {self.verification.estimator!r}; known: {', '.join(ESTIMATORS)}")

    @property
    def shortlist(self) -> int:
        """Results the re-ranking steps look at (0: none)."""
        return max(self.window_search, self.region_rerank,
                   self.verification.top_k if self.verification is not None else 0)

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SearchOptions":
        """Inverse of ``to_dict`` (ValueError on unknown or malformed fields)."""
        try:
            return dataclass_from_dict(cls, data)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"invalid search options: {exc}") from exc
