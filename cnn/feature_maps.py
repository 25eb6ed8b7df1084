"""Conv feature maps of image files, with an on-disk cache (float16), at one or several scales."""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import numpy as np

from bovw.feature_cache import FeatureCache, default_max_bytes
from bovw.images import ImageOptions, load_image, rescale
from cnn.backbone import Backbone, get_backbone
from cnn.options import BackboneOptions


class FeatureMapExtractor:
    """Image file -> {'local': (672, h, w), 'global': (1280, h', w')} float32 maps.

    The backbone is built on first use; maps are cached as float16 when a cache
    folder is given, so comparing pooling methods never re-runs the network.

    Args:
        options: backbone settings (its ``max_side`` sizes the input).
        cache_dir: feature cache folder, or None.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        scale: the decoded image is resized by this factor before the network (its own cache entries).
    """

    def __init__(self, options: BackboneOptions = BackboneOptions(), cache_dir: str | None = None,
                 device: str = "auto", scale: float = 1.0):
        self.options = options
        self.device = device
        self.scale = float(scale)
        key = options.key + ("" if self.scale == 1 else f"-x{self.scale:g}")
        self.cache = FeatureCache(cache_dir, key, default_max_bytes()) if cache_dir else None

    @property
    def backbone(self) -> Backbone:
        return get_backbone(self.options, self.device)

    def image(self, path: str) -> np.ndarray:
        """(h, w, 3) uint8 RGB as fed to the network (longest side at most ``max_side``, then ``scale``).

        Raises:
            bovw.images.ImageReadError: the file cannot be used.
        """
        return rescale(self.decode(path), self.scale)

    def decode(self, path: str) -> np.ndarray:
        """(h, w, 3) uint8 RGB as decoded, before ``scale``."""
        return load_image(path, ImageOptions(max_side=self.options.max_side), color=True)

    def __call__(self, path: str, store: bool = True,
                 decoded: Callable[[], np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Feature maps of an image file, from the cache when there; computed maps are
        cached when ``store`` (queries pass False). ``decoded``: returns the file decoded
        (``decode``), when the caller shares one decoding between scales."""
        found = self.cache.get_arrays(path) if self.cache else None
        if found is None:
            image = rescale(decoded(), self.scale) if decoded is not None else self.image(path)
            maps = self.backbone.feature_maps(image)
            found = {"local": maps["local"].astype(np.float16), "global": maps["global"].astype(np.float16),
                     "image_size": np.asarray(image.shape[:2], np.int64)}
            if self.cache and store:
                self.cache.put_arrays(path, found)
        return {name: value.astype(np.float32) if value.dtype == np.float16 else value
                for name, value in found.items()}


class MultiScaleMaps:
    """Image file or RGB array -> {'global': [(1280, h_s, w_s) float32 per scale]}: the head map of
    the image resized by each of ``scales`` (cirtorch's multi-scale description), each scale
    cached on its own (the scale-1 entries are the single-scale pipelines' ones).

    Args:
        options: backbone settings.
        scales: image scales, in the order the maps are returned.
        cache_dir, device: as ``FeatureMapExtractor``.
    """

    def __init__(self, options: BackboneOptions = BackboneOptions(), scales: Sequence[float] = (1.0,),
                 cache_dir: str | None = None, device: str = "auto"):
        self.scales = tuple(float(s) for s in scales)
        self.extractors = [FeatureMapExtractor(options, cache_dir, device, s) for s in self.scales]

    @property
    def backbone(self) -> Backbone:
        return self.extractors[0].backbone

    def __call__(self, path: str, store: bool = True) -> dict[str, list[np.ndarray]]:
        """Head maps of an image file (from the cache when there; cached when ``store``); the file
        is decoded once, and only if some scale is not cached."""
        decoded = functools.cache(lambda: self.extractors[0].decode(path))
        return {"global": [extractor(path, store, decoded)["global"] for extractor in self.extractors]}

    def of_image(self, image: np.ndarray) -> dict[str, list[np.ndarray]]:
        """Head maps of an (h, w, 3) uint8 RGB image already decoded (never cached)."""
        return {"global": [self.backbone.feature_maps(rescale(image, s))["global"] for s in self.scales]}
