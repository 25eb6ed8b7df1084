"""Named pipelines: a retrieval method is one name.

Like hloc's ``confs``: ``get_pipeline("sift-he-sv-qe")`` fixes how an index is
built (``LocalBuild`` / ``GlobalBuild``: features, vocabulary shape, embedding,
descriptor) and how it is searched by default (``SearchOptions``), so that a run
is reproducible from its name. Pipelines with the same build share an index:
``sift-bow``, ``sift-sv`` and ``sift-sv-qe`` differ only in their search options.

Importing this module does not import torch: CNN settings are plain dataclasses.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from bovw.features import SiftOptions
from bovw.hamming import HammingConfig
from bovw.images import ImageOptions
from bovw.vocabulary import VocabularyConfig
from cnn.global_descriptors import GlobalDescriptorConfig
from cnn.options import BackboneOptions, ConvLocalOptions, image_scales
from index.asmk import AsmkConfig
from index.persistence import dataclass_from_dict
from index.search_options import DiffusionConfig, ExpansionConfig, FusionConfig, SearchOptions
from index.spatial_verification import VerificationConfig


@dataclass(frozen=True)
class LocalBuild:
    """How a local-feature index (SIFT, BLCF) is built; saved with it.

    Attributes:
        sift: SIFT extraction settings (None for conv features).
        conv: conv-map local features (BLCF) instead of SIFT, or None.
        vocabulary: shape and training of the vocabulary.
        beam: nodes kept per tree level while quantizing (0 = greedy descent),
            for the database and the queries alike.
        local_whitening_dim: PCA-whitening dimensions of the local descriptors
            before quantization (BLCF); None: descriptors are quantized as extracted.
        hamming: store a 64-bit Hamming-embedding signature per feature.
        hamming_seed: seed of the embedding's random projection (and of the ASMK* binarisation's).
        asmk: one aggregated ASMK* signature per (image, word) (``index.asmk``) instead of one per
            feature.
    """

    sift: SiftOptions | None = None
    conv: ConvLocalOptions | None = None
    vocabulary: VocabularyConfig = VocabularyConfig()
    beam: int = 0
    local_whitening_dim: int | None = None
    hamming: bool = False
    hamming_seed: int = 0
    asmk: bool = False

    def __post_init__(self):
        if (self.sift is None) == (self.conv is None):
            raise ValueError("set exactly one of sift and conv")
        if self.asmk and self.hamming:
            raise ValueError("ASMK* stores one signature per (image, word), not a Hamming embedding per feature")

    @property
    def extractor(self) -> SiftOptions | ConvLocalOptions:
        """The feature extractor: ``key``, ``image`` (decoding), ``color`` and ``extract(image)``."""
        return self.sift if self.sift is not None else self.conv

    @property
    def image_options(self) -> ImageOptions:
        """How images are decoded for extraction."""
        return self.extractor.image


#: Trained heads a global pipeline can use, with the pooling each applies to: the torch heads of
#: ``cnn.heads.HEAD_KINDS`` (listed here so that this module does not import torch) and ``rmac-lw``,
#: R-MAC with a regional learned whitening computed in closed form from mined pairs. None: the head
#: aggregates the map itself (NetVLAD), the build's ``descriptor`` is not used.
LEARNED_HEADS = {"gem-fc": "gem", "gem": "gem", "rmac-lw": "rmac", "netvlad": None}


@dataclass(frozen=True)
class GlobalBuild:
    """How a CNN global-descriptor index is built; saved with it.

    Attributes:
        backbone: network and input size.
        descriptor: pooling and whitening dimensions.
        regions: store each image's whitened R-MAC regions (for region re-ranking).
        learned: the descriptor comes from a trained head of this kind (``gem-fc``: GeM with
            the trained p, then the trained affine layer, see ``cnn.heads``; ``rmac-lw``: R-MAC
            whitened by a regional Lw; ``netvlad``: NetVLAD and its affine layer, ``descriptor``
            unused), taken from a model written by ``cbir train`` and saved with the index; None:
            pooled as ``descriptor`` says and whitened by a whitening learned on images.
        scales: image scales the network sees; the pooled vectors (R-MAC: the regions) of every
            scale make one descriptor (``cnn.global_descriptors.raw_vectors``).
    """

    backbone: BackboneOptions = BackboneOptions()
    descriptor: GlobalDescriptorConfig = GlobalDescriptorConfig()
    regions: bool = False
    learned: str | None = None
    scales: tuple[float, ...] = (1.0,)

    def __post_init__(self):
        object.__setattr__(self, "scales", image_scales(self.scales))
        if self.regions and self.descriptor.method != "rmac":
            raise ValueError("only R-MAC descriptors have regions to store")
        if self.learned is not None and LEARNED_HEADS.get(self.learned, "") not in (None, self.descriptor.method):
            raise ValueError("learned heads: " + ", ".join(f"{k} ({v or 'any'})" for k, v in LEARNED_HEADS.items())
                             + f"; got {self.learned!r} for {self.descriptor.method}")

    @property
    def image_options(self) -> ImageOptions:
        """How images are decoded for the network."""
        return ImageOptions(max_side=self.backbone.max_side)


@dataclass(frozen=True)
class FusionBuild:
    """How a fusion index is built: a local-feature index and a global-descriptor index of the
    same images (searched together, see ``index.search_options.FusionConfig``).

    Attributes:
        local: build of the local-feature part.
        dense: build of the global-descriptor part.
    """

    local: LocalBuild
    dense: GlobalBuild


BUILD_KINDS = {"local": LocalBuild, "global": GlobalBuild, "fusion": FusionBuild}


@dataclass(frozen=True)
class Pipeline:
    """A retrieval method: how its index is built and how it is searched by default.

    Attributes:
        name: the name users type (``sift-bow``).
        description: one line for ``--help``.
        build: ``LocalBuild``, ``GlobalBuild`` or ``FusionBuild``.
        search: default search options.
    """

    name: str
    description: str
    build: LocalBuild | GlobalBuild | FusionBuild
    search: SearchOptions = SearchOptions()

    def __post_init__(self):
        check_search_options(self.build, self.search)

    @property
    def kind(self) -> str:
        """``local`` (inverted file of local features), ``global`` (dense descriptors) or ``fusion`` (both)."""
        return next(kind for kind, build_type in BUILD_KINDS.items() if isinstance(self.build, build_type))

    def to_dict(self) -> dict:
        """JSON-serialisable form (saved in index manifests)."""
        return {"name": self.name, "description": self.description, "kind": self.kind,
                "build": dataclasses.asdict(self.build), "search": self.search.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> "Pipeline":
        """Inverse of ``to_dict`` (ValueError on unknown or malformed fields)."""
        try:
            build = dataclass_from_dict(BUILD_KINDS[data["kind"]], data["build"])
            return cls(data["name"], data["description"], build, SearchOptions.from_dict(data["search"]))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"invalid pipeline description: {exc!r}") from exc


def check_search_options(build: LocalBuild | GlobalBuild | FusionBuild, options: SearchOptions) -> None:
    """ValueError naming the first option an index built with ``build`` cannot apply."""
    if isinstance(build, FusionBuild):
        if options.query_rotations != (0,):
            raise ValueError("query rotations are not implemented for fusion indexes")
        if options.fusion is None or dataclasses.replace(options, fusion=None) != SearchOptions():
            raise ValueError("a fusion index takes fusion settings only (its parts are searched with the "
                             "pipelines they name)")
        for kind, name in (("local", options.fusion.local), ("global", options.fusion.dense)):
            if get_pipeline(name).kind != kind:
                raise ValueError(f"fusion: pipeline {name!r} does not build a {kind} index")
        return
    if options.fusion is not None:
        raise ValueError("fusion settings need a fusion index")
    if isinstance(build, GlobalBuild):
        local_only = [name for name, off in (("query assignments", options.query_assignments == 1),
                                              ("Hamming matching", options.hamming is None),
                                              ("ASMK*", options.asmk is None),
                                              ("window search", not options.window_search),
                                              ("spatial verification", options.verification is None))
                      if not off]
        if local_only:
            raise ValueError(f"{local_only[0]} needs a local-feature index; this one holds global descriptors")
        if options.region_rerank and not build.regions:
            raise ValueError("region re-ranking needs an index that stores R-MAC regions (built as rmac-rr)")
        if options.diffusion is not None and options.diffusion.regional and not build.regions:
            raise ValueError("regional diffusion needs an index that stores R-MAC regions (built as rmac-rr)")
        if options.query_rotations != (0,) and (options.region_rerank or options.diffusion is not None):
            raise ValueError("query rotations keep each image's best score over the turned queries: they do not "
                             "combine with region re-ranking or diffusion, whose rankings are not ordered by one score")
        return
    if options.region_rerank:
        raise ValueError("region re-ranking needs an R-MAC index; this one holds local features")
    if options.diffusion is not None:
        raise ValueError("diffusion needs a global-descriptor index; this one holds local features")
    if options.expansion is not None and options.verification is None:
        raise ValueError("query expansion on a local-feature index needs spatial verification")
    if build.hamming != (options.hamming is not None):
        raise ValueError("Hamming matching settings are needed exactly for indexes with a Hamming embedding "
                         f"(this one has {'one' if build.hamming else 'none'})")
    if build.asmk != (options.asmk is not None):
        raise ValueError("ASMK* settings are needed exactly for ASMK* indexes")
    if options.asmk is not None and options.expansion is not None:
        raise ValueError("query expansion is not implemented for ASMK* indexes")
    if options.verification is not None and options.query_rotations != (0,):
        raise ValueError("query rotations do not combine with spatial verification (its matches and homography "
                         "refer to one orientation of the query)")
    if options.window_search and (build.conv is None or not build.conv.one_grid):
        raise ValueError("window search needs every conv-map position of one grid (a single-scale BLCF index "
                         "without attention selection)")


#: Features of every SIFT pipeline: RootSIFT with a detector threshold 8x below OpenCV's 0.04. The
#: shared images are small (about 320x240); the extra ~450 keypoints per image raised sift-he from
#: 0.804 to 0.846 Holidays mAP and 3.62 to 3.77 UKBench N-S (benchmarks/RESULTS.md). A budget of
#: 2,500 features per image (half of it spread over an 8x8 grid and the octaves) keeps a 1024-px
#: photo (~10,700 features without it) at 39 KB in a sift-bow index and 54 KB in a sift-he one and
#: extracts it 19% faster; it lies above the 2,365 features of the richest benchmark image, so
#: Holidays and UKBench are unchanged. Cost: queries with a quarter of a photo fell from 0.986 to
#: 0.906 mAP (sift-bow) among 1,811 distractors; whole photos are unchanged (feature_budget results).
#: Above 400x300 pixels (every benchmark image is at most that) the threshold grows with the pixel
#: count (0.03 for a 1024x768 photo, 0.0075 for its quarters), which won back 0.010 of that loss.
SIFT_FEATURES = SiftOptions(root=True, contrast_threshold=0.005, max_features=2500, spread=0.5,
                            contrast_reference_pixels=120_000, contrast_growth=1.0)
#: Build of the tf-idf SIFT pipelines: 10^6 words (best measured size, benchmarks/RESULTS.md), beam 3.
SIFT_BUILD = LocalBuild(sift=SIFT_FEATURES, vocabulary=VocabularyConfig(branching=10, depth=6), beam=3)
#: Build of the Hamming-embedding pipelines: ~20k words, as in the HE literature (COLMAP: 16k).
HE_BUILD = LocalBuild(sift=SIFT_FEATURES, vocabulary=VocabularyConfig(branching=141, depth=2), beam=3, hamming=True)
#: Build of the ASMK* pipelines: HE's features, vocabulary and beam; one aggregated signature per
#: (image, word) instead of one per feature.
ASMK_BUILD = LocalBuild(sift=SIFT_FEATURES, vocabulary=VocabularyConfig(branching=141, depth=2), beam=3, asmk=True)
#: BLCF: block-11 conv positions, whitened to 256 dims, 25k words.
BLCF_BUILD = LocalBuild(conv=ConvLocalOptions(), vocabulary=VocabularyConfig(branching=158, depth=2),
                        local_whitening_dim=256)
#: BLCF's conv words from three image scales (HOW's multi-scale extraction), the 600 of largest
#: activation norm kept per image (HOW's attention): with signatures, Holidays-811 mAP 0.643 -> 0.689
#: (three scales) -> 0.775 (600 kept) and UKBench-1000 N-S 3.722 -> 3.813 -> 3.859 for Hamming
#: embedding (benchmarks/RESULTS.md, "Signatures on conv words").
_MULTI_SCALE_CONV = ConvLocalOptions(scales=(1.414, 1.0, 0.707), max_features=600)
#: BLCF's multi-scale conv words with a Hamming signature of each position's whitened residual.
BLCF_HE_BUILD = dataclasses.replace(BLCF_BUILD, conv=_MULTI_SCALE_CONV, hamming=True)
#: BLCF's multi-scale conv words with ASMK*: residuals aggregated per (image, word).
BLCF_ASMK_BUILD = dataclasses.replace(BLCF_BUILD, conv=_MULTI_SCALE_CONV, asmk=True)

#: Image scales of the multi-scale global descriptors: the scales of the multi-scale conv words
#: (rmac-ms: Holidays-811 mAP 0.788 -> 0.806, UKBench-1000 N-S 3.944 -> 3.960, benchmarks/RESULTS.md).
_GLOBAL_SCALES = (1.414, 1.0, 0.707)

_VERIFY = VerificationConfig()
#: alpha-QE of global descriptors (benchmarks/RESULTS.md, "Ranking refinement").
_GLOBAL_QE = ExpansionConfig(max_results=2, alpha=3.0)
#: Diffusion: a sparse graph and a short reach suit collections whose objects have a few views
#: each (Holidays, UKBench, photo folders); alpha 0.99 with k 50, tuned for Oxford/Paris landmarks
#: with hundreds of views, lost 0.17 Holidays mAP (benchmarks/RESULTS.md, "Ranking refinement").
_DIFFUSION = DiffusionConfig(k=10, gamma=3.0, alpha=0.5, query_k=3)
#: Regions (~20 per image) make a denser manifold that bears a longer reach.
_REGIONAL_DIFFUSION = DiffusionConfig(k=30, gamma=3.0, alpha=0.8, query_k=3, regional=True)
_BOW = SearchOptions(query_assignments=3)
_HE = SearchOptions(query_assignments=3, hamming=HammingConfig())
_ASMK = SearchOptions(query_assignments=3, asmk=AsmkConfig())
#: Conv words want no selectivity beyond the threshold: aggregated over ~600 positions of three scales,
#: their signatures agree in part between views of one object, and alpha 3 discards that (alpha 1:
#: Holidays-811 0.790 -> 0.831, UKBench-1000 3.848 -> 3.883); single SIFT features need it (alpha 1
#: lost 0.05 mAP; benchmarks/RESULTS.md, issue 16).
_BLCF_ASMK = SearchOptions(query_assignments=3, asmk=AsmkConfig(alpha=1.0))

# Single-vector CNN methods keep 512 whitened dimensions: whitening learned on ~1000 images cannot
# support all 1280 (it fits noise, UKBench N-S fell from 3.93 to 1.8-2.9 with MAC/GeM). R-MAC
# learns from ~20 regions per image and keeps all of them.
PIPELINES: dict[str, Pipeline] = {p.name: p for p in [
    Pipeline("sift-bow", "RootSIFT, vocabulary tree (10^6 words, beam 3), query multiple assignment 3, "
             "tf-idf inverted file", SIFT_BUILD, _BOW),
    Pipeline("sift-sv", "sift-bow + homography re-ranking of the top 100 (one-point similarity + LO)",
             SIFT_BUILD, dataclasses.replace(_BOW, verification=_VERIFY)),
    Pipeline("sift-sv-qe", "sift-sv + average query expansion with the verified results",
             SIFT_BUILD, dataclasses.replace(_BOW, verification=_VERIFY, expansion=ExpansionConfig())),
    Pipeline("sift-he", "RootSIFT, 20k-word vocabulary (141^2, beam 3), 3 words per query descriptor, "
             "Hamming embedding (64 bits, threshold 24, burstiness)", HE_BUILD, _HE),
    Pipeline("sift-he-sv", "sift-he + homography re-ranking of the top 100", HE_BUILD,
             dataclasses.replace(_HE, verification=_VERIFY)),
    Pipeline("sift-he-sv-qe", "sift-he-sv + average query expansion", HE_BUILD,
             dataclasses.replace(_HE, verification=_VERIFY, expansion=ExpansionConfig())),
    Pipeline("sift-asmk", "RootSIFT, 20k-word vocabulary (141^2, beam 3), 3 words per query descriptor, ASMK* "
             "(residuals aggregated per word, 64-bit signatures, alpha 3, tau 0)", ASMK_BUILD, _ASMK),
    Pipeline("sift-asmk-sv", "sift-asmk + homography re-ranking of the top 100 (words whose aggregated signatures "
             "agree)", ASMK_BUILD, dataclasses.replace(_ASMK, verification=_VERIFY)),
    Pipeline("blcf", "BLCF: EfficientNet-Lite0 block-11 conv positions as local features, L2-PCAw(256)-L2, "
             "25k-word vocabulary (158^2), 3 words per query position, tf-idf inverted file (global search)",
             BLCF_BUILD, SearchOptions(query_assignments=3)),
    Pipeline("blcf-ls", "blcf + local search: the top 100 re-ranked by their best window",
             BLCF_BUILD, SearchOptions(query_assignments=3, window_search=100)),
    Pipeline("blcf-he", "blcf's conv words from image scales 1.414, 1 and 0.707, the 600 of largest activation norm, "
             "with Hamming embedding (64 bits of each position's whitened residual, threshold 24, burstiness)",
             BLCF_HE_BUILD, _HE),
    Pipeline("blcf-asmk", "blcf's conv words from image scales 1.414, 1 and 0.707, the 600 of largest activation "
             "norm, with ASMK* (residuals aggregated per word, 64-bit signatures, alpha 1, tau 0)",
             BLCF_ASMK_BUILD, _BLCF_ASMK),
    Pipeline("spoc", "EfficientNet-Lite0 head map, sum pooling, L2-PCAw(512)-L2",
             GlobalBuild(descriptor=GlobalDescriptorConfig("spoc", whitening_dim=512))),
    Pipeline("mac", "EfficientNet-Lite0 head map, max pooling, L2-PCAw(512)-L2",
             GlobalBuild(descriptor=GlobalDescriptorConfig("mac", whitening_dim=512))),
    Pipeline("gem", "EfficientNet-Lite0 head map, GeM pooling (p=3), L2-PCAw(512)-L2",
             GlobalBuild(descriptor=GlobalDescriptorConfig("gem", whitening_dim=512))),
    Pipeline("rmac", "EfficientNet-Lite0 head map, R-MAC (3 scales, regions whitened then summed)",
             GlobalBuild(descriptor=GlobalDescriptorConfig("rmac"))),
    Pipeline("rmac-ms", "rmac from image scales 1.414, 1 and 0.707: the regions of the three head maps whitened "
             "and summed", GlobalBuild(descriptor=GlobalDescriptorConfig("rmac"), scales=_GLOBAL_SCALES)),
    Pipeline("rmac-lw", "rmac-ms whitened by a regional learned whitening (Lw) from pairs that sift-he-sv verified "
             "in unlabelled training photos (cbir train --head rmac-lw)",
             GlobalBuild(descriptor=GlobalDescriptorConfig("rmac"), learned="rmac-lw", scales=_GLOBAL_SCALES)),
    Pipeline("rmac-rr", "rmac + re-ranking of the top 100 by best region match",
             GlobalBuild(descriptor=GlobalDescriptorConfig("rmac"), regions=True), SearchOptions(region_rerank=100)),
    Pipeline("crow", "EfficientNet-Lite0 head map, CroW weighting, L2-PCAw(512)-L2",
             GlobalBuild(descriptor=GlobalDescriptorConfig("crow", whitening_dim=512))),
    Pipeline("gem-ft", "EfficientNet-Lite0 head map, GeM with a trained p, trained FC layer (initialised from "
             "learned whitening) -> L2; the head comes from a model trained by cbir train (--model)",
             GlobalBuild(descriptor=GlobalDescriptorConfig("gem"), learned="gem-fc")),
    Pipeline("netvlad-ft", "EfficientNet-Lite0 head map, trained NetVLAD (16 clusters initialised by k-means of the "
             "positions) and FC layer (initialised from learned whitening) -> L2; the head comes from a model "
             "trained by cbir train --head netvlad (--model)",
             GlobalBuild(learned="netvlad")),
    Pipeline("rmac-qe", "rmac + alpha query expansion with the top results (alpha-QE)",
             GlobalBuild(descriptor=GlobalDescriptorConfig("rmac")), SearchOptions(expansion=_GLOBAL_QE)),
    Pipeline("rmac-diffusion", "rmac + diffusion on the collection's mutual kNN graph",
             GlobalBuild(descriptor=GlobalDescriptorConfig("rmac")), SearchOptions(diffusion=_DIFFUSION)),
    Pipeline("rmac-rr-diffusion", "rmac-rr + diffusion on the kNN graph of the images' R-MAC regions",
             GlobalBuild(descriptor=GlobalDescriptorConfig("rmac"), regions=True),
             SearchOptions(diffusion=_REGIONAL_DIFFUSION)),
]}


def get_pipeline(name: str | Pipeline) -> Pipeline:
    """The pipeline called ``name`` (ValueError listing the known names otherwise); a Pipeline
    is returned as is."""
    if isinstance(name, Pipeline):
        return name
    try:
        return PIPELINES[name]
    except KeyError:
        raise ValueError(f"unknown pipeline {name!r}; known: {', '.join(PIPELINES)}") from None


#: Fusion of the best SIFT and CNN pipelines (defined after get_pipeline: its options name them).
PIPELINES["fusion"] = Pipeline(
    "fusion", "sift-he-sv-qe and rmac-diffusion on the same images: verified results first, then "
    "reciprocal-rank fusion", FusionBuild(HE_BUILD, PIPELINES["rmac-diffusion"].build),
    SearchOptions(fusion=FusionConfig()))
PIPELINES["fusion-ve"] = Pipeline(
    "fusion-ve", "fusion whose rmac-diffusion graph also joins the image pairs verified (>= 10 inliers) "
    "while indexing (each added image runs one verified sift-he query)", PIPELINES["fusion"].build,
    SearchOptions(fusion=FusionConfig(verified_edges=10)))


def pipeline_from_format1(data: dict, index_format: str) -> Pipeline:
    """The pipeline of an index saved in format 1 (build and query settings in one record).

    Args:
        data: the manifest's ``pipeline`` entry.
        index_format: ``cbir-index`` (local features) or ``cbir-global-index``.
    """
    try:
        name, description = data["name"], data["description"]
        if index_format == "cbir-global-index":
            backbone = {k: v for k, v in data["backbone"].items() if k not in ("device", "cpu_threads")}
            build = GlobalBuild(dataclass_from_dict(BackboneOptions, backbone),
                                dataclass_from_dict(GlobalDescriptorConfig, data["descriptor"]),
                                regions=bool(data["region_rerank"]))
            return Pipeline(name, description, build, SearchOptions(region_rerank=data["region_rerank"]))
        conv = None
        if data["conv"] is not None:
            backbone = {k: v for k, v in data["conv"]["backbone"].items() if k not in ("device", "cpu_threads")}
            conv = ConvLocalOptions(dataclass_from_dict(BackboneOptions, backbone))
        hamming = dict(data["hamming"]) if data["hamming"] is not None else None
        seed = hamming.pop("seed", 0) if hamming is not None else 0
        build = LocalBuild(dataclass_from_dict(SiftOptions, data["features"]) if data["features"] else None, conv,
                           dataclass_from_dict(VocabularyConfig, data["vocabulary"]), data["beam"],
                           data["local_whitening_dim"], hamming is not None, seed)
        search = SearchOptions(
            data["query_assignments"], dataclass_from_dict(HammingConfig, hamming) if hamming is not None else None,
            data["window_search"],
            dataclass_from_dict(VerificationConfig, data["verification"]) if data["verification"] else None,
            dataclass_from_dict(ExpansionConfig, data["expansion"]) if data["expansion"] else None)
        return Pipeline(name, description, build, search)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"invalid format-1 pipeline description: {exc!r}") from exc
