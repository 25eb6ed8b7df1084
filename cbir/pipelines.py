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
    """

    name: str
    description: str
    features: SiftOptions = SiftOptions()
    vocabulary: VocabularyConfig = VocabularyConfig()
    query_assignments: int = 1
    beam: int = 0

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
            features = dict(data["features"])
            features["image"] = ImageOptions(**features["image"])
            return cls(**{**data, "features": SiftOptions(**features),
                          "vocabulary": VocabularyConfig(**data["vocabulary"])})
        except (KeyError, TypeError) as exc:
            raise ValueError(f"invalid pipeline description: {exc}") from exc


PIPELINES: dict[str, Pipeline] = {
    pipeline.name: pipeline for pipeline in [
        Pipeline("sift-bow", "RootSIFT, vocabulary tree (10^5 words, beam 3), tf-idf inverted file",
                 SiftOptions(root=True), VocabularyConfig(branching=10, depth=5), beam=3),
    ]
}


def get_pipeline(name: str) -> Pipeline:
    """The pipeline called ``name`` (ValueError listing the known names otherwise)."""
    try:
        return PIPELINES[name]
    except KeyError:
        raise ValueError(f"unknown pipeline {name!r}; known: {', '.join(PIPELINES)}") from None
