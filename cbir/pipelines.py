"""Named pipeline configurations: a retrieval method is one name.

Like hloc's ``confs``: ``PIPELINES["sift-bow"]`` fixes the feature extractor,
the default vocabulary shape and the query-side options, so that a run is
reproducible from its name.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from bovw.feature_cache import FeatureCache
from bovw.features import LocalFeatures, SiftOptions, sift_from_array
from bovw.images import ImageOptions, load_image
from bovw.vocabulary import VocabularyConfig
from cnn.pipelines import GLOBAL_PIPELINES
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
class Pipeline:
    """A retrieval method.

    Attributes:
        name: the name users type (``sift-bow``).
        description: one line for ``--help``.
        features: local feature extraction settings.
        vocabulary: shape and training of the vocabulary used when none is given.
        query_assignments: words per query descriptor (multiple assignment, 1 = hard).
        beam: nodes kept per tree level while quantizing (0 = greedy descent).
        verification: spatial re-ranking of the top results, or None.
        expansion: query expansion with the verified results, or None (needs verification).
    """

    name: str
    description: str
    features: SiftOptions = SiftOptions()
    vocabulary: VocabularyConfig = VocabularyConfig()
    query_assignments: int = 1
    beam: int = 0
    verification: VerificationConfig | None = None
    expansion: ExpansionConfig | None = None

    def __post_init__(self):
        if self.expansion is not None and self.verification is None:
            raise ValueError(f"pipeline {self.name!r}: query expansion needs spatial verification")
        if self.verification is not None and self.verification.estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {self.verification.estimator!r}; known: {', '.join(ESTIMATORS)}")

    def read_features(self, path: str) -> LocalFeatures:
        """Decode an image file and extract this pipeline's local features (no cache).

        Raises:
            bovw.images.ImageReadError: the file cannot be used.
        """
        return sift_from_array(load_image(path, self.features.image), self.features)

    def feature_cache(self, directory: str | None) -> FeatureCache | None:
        """The feature cache of this pipeline's extractor in ``directory`` (None: no cache)."""
        return FeatureCache(directory, self.features.key) if directory else None

    def to_dict(self) -> dict:
        """JSON-serialisable form (saved in index manifests)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Pipeline":
        """Inverse of ``to_dict`` (raises ValueError on unknown or missing fields)."""
        try:
            return dataclass_from_dict(cls, data)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"invalid pipeline description: {exc}") from exc


PIPELINES: dict[str, Pipeline] = {
    pipeline.name: pipeline for pipeline in [
        Pipeline("sift-bow", "RootSIFT, vocabulary tree (10^5 words, beam 3), tf-idf inverted file",
                 SiftOptions(root=True), VocabularyConfig(branching=10, depth=5), beam=3),
        Pipeline("sift-sv", "sift-bow + RANSAC homography re-ranking of the top 100",
                 SiftOptions(root=True), VocabularyConfig(branching=10, depth=5), beam=3,
                 verification=VerificationConfig()),
        Pipeline("sift-sv-qe", "sift-sv + average query expansion with the verified results",
                 SiftOptions(root=True), VocabularyConfig(branching=10, depth=5), beam=3,
                 verification=VerificationConfig(), expansion=ExpansionConfig()),
    ]
}


ALL_PIPELINES: dict = {**PIPELINES, **GLOBAL_PIPELINES}


def get_pipeline(name: str):
    """The pipeline called ``name``: a local-feature ``Pipeline`` or a CNN ``GlobalPipeline``
    (ValueError listing the known names otherwise)."""
    try:
        return ALL_PIPELINES[name]
    except KeyError:
        raise ValueError(f"unknown pipeline {name!r}; known: {', '.join(ALL_PIPELINES)}") from None
