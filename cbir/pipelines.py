"""Named pipeline configurations: a retrieval method is one name.

Like hloc's ``confs``: ``PIPELINES["sift-bow"]`` fixes the feature extractor,
the default vocabulary shape and the query-side options, so that a run is
reproducible from its name.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from bovw.feature_cache import FeatureCache
from bovw.hamming import HammingConfig
from bovw.features import LocalFeatures, SiftOptions, sift_from_array
from bovw.images import ImageOptions, load_image
from bovw.vocabulary import VocabularyConfig
from cnn.local_features import ConvLocalOptions, conv_local_from_image
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
        features: SIFT extraction settings (None for conv features).
        vocabulary: shape and training of the vocabulary used when none is given.
        query_assignments: words per query descriptor (multiple assignment, 1 = hard).
        beam: nodes kept per tree level while quantizing (0 = greedy descent).
        verification: spatial re-ranking of the top results, or None.
        expansion: query expansion with the verified results, or None (needs verification).
        window_search: re-rank this many top results by BLCF local search (0: off).
        conv: conv-map local features (BLCF) instead of SIFT, or None.
        local_whitening_dim: PCA-whitening dimensions of local descriptors before
            quantization (BLCF); None: descriptors are quantized as extracted.
        hamming: score with the Hamming-embedding match kernel instead of tf-idf cosine.
    """

    name: str
    description: str
    features: SiftOptions | None = SiftOptions()
    vocabulary: VocabularyConfig = VocabularyConfig()
    query_assignments: int = 1
    beam: int = 0
    verification: VerificationConfig | None = None
    expansion: ExpansionConfig | None = None
    window_search: int = 0
    conv: ConvLocalOptions | None = None
    local_whitening_dim: int | None = None
    hamming: HammingConfig | None = None

    def __post_init__(self):
        if (self.features is None) == (self.conv is None):
            raise ValueError(f"pipeline {self.name!r}: set exactly one of features (SIFT) and conv")
        if self.expansion is not None and self.verification is None:
            raise ValueError(f"pipeline {self.name!r}: query expansion needs spatial verification")
        if self.verification is not None and self.verification.estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {self.verification.estimator!r}; known: {', '.join(ESTIMATORS)}")

    @property
    def image_options(self) -> ImageOptions:
        """How this pipeline decodes images."""
        return self.features.image if self.features else ImageOptions(max_side=self.conv.backbone.max_side)

    @property
    def color(self) -> bool:
        """Whether the extractor takes RGB (conv features) rather than grayscale (SIFT)."""
        return self.conv is not None

    def features_from_image(self, image: np.ndarray) -> LocalFeatures:
        """Local features of a decoded image (grayscale for SIFT, RGB for conv features)."""
        if self.conv is not None:
            return conv_local_from_image(image, self.conv)
        return sift_from_array(image, self.features)

    def read_features(self, path: str) -> LocalFeatures:
        """Decode an image file and extract this pipeline's local features (no cache).

        Raises:
            bovw.images.ImageReadError: the file cannot be used.
        """
        return self.features_from_image(load_image(path, self.image_options, color=self.color))

    def feature_cache(self, directory: str | None) -> FeatureCache | None:
        """The feature cache of this pipeline's extractor in ``directory`` (None: no cache)."""
        key = self.conv.key if self.conv is not None else self.features.key
        return FeatureCache(directory, key) if directory else None

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


#: Features of every SIFT pipeline: RootSIFT with a detector threshold 8x below OpenCV's 0.04. The
#: shared images are small (about 320x240); the extra ~450 keypoints per image raised sift-he from
#: 0.804 to 0.846 Holidays mAP and 3.62 to 3.77 UKBench N-S (benchmarks/RESULTS.md).
SIFT_FEATURES = SiftOptions(root=True, contrast_threshold=0.005)
#: Default vocabulary of the SIFT pipelines: 10^6 words (best measured size, benchmarks/RESULTS.md).
SIFT_VOCABULARY = VocabularyConfig(branching=10, depth=6)
#: Vocabulary of the Hamming-embedding pipelines: ~20k words, as in the HE literature (COLMAP: 16k).
HE_VOCABULARY = VocabularyConfig(branching=141, depth=2)

PIPELINES: dict[str, Pipeline] = {
    pipeline.name: pipeline for pipeline in [
        Pipeline("sift-bow", "RootSIFT, vocabulary tree (10^6 words, beam 3), query multiple assignment 3, "
                 "tf-idf inverted file", SIFT_FEATURES, SIFT_VOCABULARY, query_assignments=3, beam=3),
        Pipeline("sift-sv", "sift-bow + homography re-ranking of the top 100 (one-point similarity + LO)",
                 SIFT_FEATURES, SIFT_VOCABULARY, query_assignments=3, beam=3,
                 verification=VerificationConfig()),
        Pipeline("sift-sv-qe", "sift-sv + average query expansion with the verified results",
                 SIFT_FEATURES, SIFT_VOCABULARY, query_assignments=3, beam=3,
                 verification=VerificationConfig(), expansion=ExpansionConfig()),
        Pipeline("sift-he", "RootSIFT, 20k-word vocabulary (141^2, beam 3), 3 words per query descriptor, "
                 "Hamming embedding (64 bits, threshold 24, burstiness)", SIFT_FEATURES, HE_VOCABULARY,
                 query_assignments=3, beam=3, hamming=HammingConfig()),
        Pipeline("sift-he-sv", "sift-he + homography re-ranking of the top 100", SIFT_FEATURES,
                 HE_VOCABULARY, query_assignments=3, beam=3, hamming=HammingConfig(),
                 verification=VerificationConfig()),
        Pipeline("sift-he-sv-qe", "sift-he-sv + average query expansion", SIFT_FEATURES,
                 HE_VOCABULARY, query_assignments=3, beam=3, hamming=HammingConfig(),
                 verification=VerificationConfig(), expansion=ExpansionConfig()),
        Pipeline("blcf", "BLCF: EfficientNet-Lite0 block-11 conv positions as local features, L2-PCAw(256)-L2, "
                 "25k-word vocabulary (158^2), 3 words per query position, tf-idf inverted file (global search)",
                 features=None, conv=ConvLocalOptions(), local_whitening_dim=256,
                 vocabulary=VocabularyConfig(branching=158, depth=2), query_assignments=3),
        Pipeline("blcf-ls", "blcf + local search: the top 100 re-ranked by their best window",
                 features=None, conv=ConvLocalOptions(), local_whitening_dim=256,
                 vocabulary=VocabularyConfig(branching=158, depth=2), query_assignments=3, window_search=100),
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
