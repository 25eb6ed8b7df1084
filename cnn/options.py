"""Settings of the CNN feature extractors, importable without torch.

A pipeline's build settings name a backbone and a conv layer; only extracting
features needs torch (``cnn.backbone``), so a SIFT command never imports it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bovw.images import ImageOptions

#: Blocks of EfficientNet-Lite0 are ``net._blocks[0..LAST_BLOCK]`` (``cbir train --from-block``: 0..LAST_BLOCK).
LAST_BLOCK = 15
#: Layers of EfficientNet-Lite0 that can give BLCF's local features: (block index, or None for
#: the head conv; ``expand`` for the block's expansion conv after BN + ReLU6, ``output`` for the
#: block's output, its projection plus skip; stride in pixels; channels).
LOCAL_LAYERS = {
    "block11-expand": (11, "expand", 16, 672),  # the default: stand-in for VGG16 conv5_1
    "block10": (10, "output", 16, 112),  # last block at stride 16
    "block15": (15, "output", 32, 320),  # last block, the head conv's input
    "head": (None, "output", 32, 1280),  # the head conv after BN + ReLU6 (the global map)
}
DEFAULT_LOCAL_LAYER = "block11-expand"
#: Channels of each exposed map (BLCF's 'local' map at its default layer).
CHANNELS = {"local": LOCAL_LAYERS[DEFAULT_LOCAL_LAYER][3], "global": 1280}


def image_scales(scales) -> tuple[float, ...]:
    """Image scales as a tuple of floats (a list when read from JSON); ValueError unless there is at
    least one and all are positive."""
    scales = tuple(float(s) for s in scales)
    if not scales or min(scales) <= 0:
        raise ValueError(f"image scales must be positive (got {scales})")
    return scales


@dataclass(frozen=True)
class BackboneOptions:
    """How images go through the network (what changes the feature maps, nothing else).

    Attributes:
        name: backbone (only ``efficientnet-lite0`` has offline weights).
        max_side: longest image side in pixels fed to the network (aspect kept;
            larger images are down-scaled to it).
        upscale: also up-scale smaller images to ``max_side`` (conv maps of small
            photos are otherwise only a few cells wide).
        tuned: content digest (16 hex digits) of fine-tuned weights of the last blocks that replace
            the ImageNet ones (``cbir train --from-block``; the weights themselves are registered in
            the process with ``cnn.backbone.register_tuned``); None: the ImageNet weights.
    """

    name: str = "efficientnet-lite0"
    max_side: int = 1024
    upscale: bool = False
    tuned: str | None = None

    @property
    def key(self) -> str:
        """Changes whenever the feature maps would."""
        return (f"{self.name}-v1-side{self.max_side}" + ("-upscaled" if self.upscale else "")
                + (f"-tuned-{self.tuned}" if self.tuned else ""))


@dataclass(frozen=True)
class ConvLocalOptions:
    """Local features from conv-map positions (BLCF): which network and map.

    Attributes:
        backbone: network and input size.
        scales: image scales the network sees (HOW's multi-scale extraction): the positions of
            every scale's map are features, keypoints in the pixels of the image as given.
        max_features: keep only this many positions of an image, those whose activation vector
            has the largest L2 norm over all scales (HOW's attention: strong activations mark
            the object, weak ones flat background); None keeps every position.
        layer: the map whose positions are the features, a key of ``LOCAL_LAYERS``.
    """

    backbone: BackboneOptions = BackboneOptions()
    scales: tuple[float, ...] = (1.0,)
    max_features: int | None = None
    layer: str = DEFAULT_LOCAL_LAYER

    def __post_init__(self):
        object.__setattr__(self, "scales", image_scales(self.scales))
        if self.layer not in LOCAL_LAYERS:
            raise ValueError(f"unknown conv layer {self.layer!r}; known: {', '.join(LOCAL_LAYERS)}")
        if self.max_features is not None and self.max_features < 1:
            raise ValueError(f"max_features must be at least 1 (got {self.max_features})")

    @property
    def one_grid(self) -> bool:
        """Every position of one map is a feature (what window search needs)."""
        return self.scales == (1.0,) and self.max_features is None

    @property
    def key(self) -> str:
        """Feature-cache key of these settings."""
        scales = "" if self.scales == (1.0,) else "-scales" + "-".join(f"{s:g}" for s in self.scales)
        top = "" if self.max_features is None else f"-top{self.max_features}"
        layer = "" if self.layer == DEFAULT_LOCAL_LAYER else f"-{self.layer}"
        return f"convlocal-v1-{self.backbone.key}{layer}{scales}{top}"

    @property
    def image(self) -> ImageOptions:
        """How images are decoded for this extractor."""
        return ImageOptions(max_side=self.backbone.max_side)

    #: The extractor takes RGB images.
    color = True

    def extract(self, image: np.ndarray):
        """LocalFeatures of an (h, w, 3) uint8 RGB image (imports torch on first use)."""
        from cnn.local_features import conv_local_from_image
        return conv_local_from_image(image, self)
