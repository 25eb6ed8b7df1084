"""Conv feature maps of image files, with an on-disk cache (float16)."""
from __future__ import annotations

import numpy as np

from bovw.feature_cache import FeatureCache, default_max_bytes
from bovw.images import ImageOptions, load_image
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
    """

    def __init__(self, options: BackboneOptions = BackboneOptions(), cache_dir: str | None = None,
                 device: str = "auto"):
        self.options = options
        self.device = device
        self.cache = FeatureCache(cache_dir, options.key, default_max_bytes()) if cache_dir else None

    @property
    def backbone(self) -> Backbone:
        return get_backbone(self.options, self.device)

    def image(self, path: str) -> np.ndarray:
        """(h, w, 3) uint8 RGB as fed to the network (longest side at most ``max_side``).

        Raises:
            bovw.images.ImageReadError: the file cannot be used.
        """
        return load_image(path, ImageOptions(max_side=self.options.max_side), color=True)

    def __call__(self, path: str, store: bool = True) -> dict[str, np.ndarray]:
        """Feature maps of an image file, from the cache when there; computed maps are
        cached when ``store`` (queries pass False)."""
        found = self.cache.get_arrays(path) if self.cache else None
        if found is None:
            image = self.image(path)
            maps = self.backbone.feature_maps(image)
            found = {"local": maps["local"].astype(np.float16), "global": maps["global"].astype(np.float16),
                     "image_size": np.asarray(image.shape[:2], np.int64)}
            if self.cache and store:
                self.cache.put_arrays(path, found)
        return {name: value.astype(np.float32) if value.dtype == np.float16 else value
                for name, value in found.items()}
