"""Named CNN global-descriptor pipelines: spoc, mac, gem, rmac, rmac-rr, crow."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from cnn.backbone import BackboneOptions
from cnn.global_descriptors import GlobalDescriptorConfig
from index.persistence import dataclass_from_dict


@dataclass(frozen=True)
class GlobalPipeline:
    """A global-descriptor retrieval method.

    Attributes:
        name: the name users type.
        description: one line for ``--help``.
        backbone: network and input size.
        descriptor: pooling and whitening.
        region_rerank: re-rank this many top results by the best match between
            the query descriptor and each image's whitened R-MAC regions (0: off).
    """

    name: str
    description: str
    backbone: BackboneOptions = BackboneOptions()
    descriptor: GlobalDescriptorConfig = GlobalDescriptorConfig()
    region_rerank: int = 0

    def __post_init__(self):
        if self.region_rerank and self.descriptor.method != "rmac":
            raise ValueError(f"pipeline {self.name!r}: region re-ranking needs R-MAC regions")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "GlobalPipeline":
        try:
            return dataclass_from_dict(cls, data)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"invalid pipeline description: {exc}") from exc


# Single-vector methods keep 512 whitened dimensions: whitening learned on ~1000
# images cannot support all 1280 (it fits noise, UKBench N-S fell from 3.93 to 1.8-2.9
# with MAC/GeM). R-MAC learns from ~20 regions per image and keeps all of them.
GLOBAL_PIPELINES: dict[str, GlobalPipeline] = {p.name: p for p in [
    GlobalPipeline("spoc", "EfficientNet-Lite0 head map, sum pooling, L2-PCAw(512)-L2",
                   descriptor=GlobalDescriptorConfig("spoc", whitening_dim=512)),
    GlobalPipeline("mac", "EfficientNet-Lite0 head map, max pooling, L2-PCAw(512)-L2",
                   descriptor=GlobalDescriptorConfig("mac", whitening_dim=512)),
    GlobalPipeline("gem", "EfficientNet-Lite0 head map, GeM pooling (p=3), L2-PCAw(512)-L2",
                   descriptor=GlobalDescriptorConfig("gem", whitening_dim=512)),
    GlobalPipeline("rmac", "EfficientNet-Lite0 head map, R-MAC (3 scales, regions whitened then summed)",
                   descriptor=GlobalDescriptorConfig("rmac")),
    GlobalPipeline("rmac-rr", "rmac + re-ranking of the top 100 by best region match",
                   descriptor=GlobalDescriptorConfig("rmac"), region_rerank=100),
    GlobalPipeline("crow", "EfficientNet-Lite0 head map, CroW weighting, L2-PCAw(512)-L2",
                   descriptor=GlobalDescriptorConfig("crow", whitening_dim=512)),
]}
