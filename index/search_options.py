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
from index.persistence import dataclass_from_dict
from index.spatial_verification import ESTIMATORS, VerificationConfig


@dataclass(frozen=True)
class ExpansionConfig:
    """Query expansion with spatially verified results.

    Attributes:
        max_results: verified results (best first) added to the query.
        alpha: 0 for average query expansion (Chum et al. 2007); > 0 weights each
            result by its similarity to the query to the power alpha (alpha-QE).
    """

    max_results: int = 50
    alpha: float = 0.0


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
        expansion: query expansion with the verified results, or None (needs verification).
        region_rerank: re-rank this many top results by the best match between the
            query descriptor and each image's stored R-MAC regions (0: off). Global indexes.
    """

    query_assignments: int = 1
    hamming: HammingConfig | None = None
    window_search: int = 0
    verification: VerificationConfig | None = None
    expansion: ExpansionConfig | None = None
    region_rerank: int = 0

    def __post_init__(self):
        if self.query_assignments < 1:
            raise ValueError("query_assignments must be at least 1")
        if self.window_search < 0 or self.region_rerank < 0:
            raise ValueError("window_search and region_rerank count results: they cannot be negative")
        if self.expansion is not None and self.verification is None:
            raise ValueError("query expansion needs spatial verification")
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
