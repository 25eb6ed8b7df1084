"""Local convolutional features for BLCF (Mohedano et al., ICMR 2016).

Every spatial position of a conv map (by default block 11's expansion, stride 16) is a local feature: its descriptor
is the activation vector there (L2-normalised here; PCA whitening and the second
L2 come from the index's learned whitening), its keypoint the position's centre
in pixels, with the stride as scale and angle 0. The vocabulary, inverted file
and re-ranking code then treat it like any other local feature.
"""
from __future__ import annotations

import numpy as np

from bovw.features import LocalFeatures
from bovw.images import rescale
from cnn.backbone import get_backbone
from cnn.options import LOCAL_LAYERS, ConvLocalOptions
from cnn.pooling import l2_normalize


def conv_local_features(local_map: np.ndarray, stride: float, image_size: tuple) -> LocalFeatures:
    """(C, H, W) activations -> H*W LocalFeatures, row-major.

    Keypoints: x = (col + 0.5) * stride, y = (row + 0.5) * stride, scale = stride, angle 0.
    """
    channels, height, width = local_map.shape
    rows, cols = np.mgrid[0:height, 0:width]
    keypoints = np.stack([(cols.ravel() + 0.5) * stride, (rows.ravel() + 0.5) * stride,
                          np.full(height * width, stride), np.zeros(height * width)], axis=1)
    # float16 precision, as the feature cache stores them: features from the cache and freshly
    # extracted ones are then identical (rounding changed 0.01% of BLCF's words).
    descriptors = l2_normalize(local_map.reshape(channels, -1).T).astype(np.float16).astype(np.float32)
    return LocalFeatures(keypoints, descriptors, image_size)


def strongest(norms: np.ndarray, count: int | None) -> np.ndarray:
    """Indices of the ``count`` largest ``norms`` (ties: the earlier first), in increasing order;
    every index when ``count`` is None or not below ``len(norms)``."""
    if count is None or count >= len(norms):
        return np.arange(len(norms))
    return np.sort(np.argsort(-norms, kind="stable")[:count])


def conv_local_from_image(image: np.ndarray, options: ConvLocalOptions = ConvLocalOptions(),
                          device: str = "auto") -> LocalFeatures:
    """Local conv features of an (h, w, 3) uint8 RGB image at each of ``options.scales``; keypoints
    (x, y and the stride as scale) in its pixels (the stride shrinks accordingly when the image is
    up-scaled, by a scale above 1 or by the backbone). With ``options.max_features``, only the
    positions of largest activation norm over all scales are kept, in extraction order."""
    backbone = get_backbone(options.backbone, device)
    stride = LOCAL_LAYERS[options.layer][2]
    height, width = image.shape[:2]
    keypoints, descriptors, norms = [], [], []
    for scale in options.scales:
        scaled = rescale(image, scale)
        seen = backbone.input_size(*scaled.shape[:2])[0] / height  # network input pixels per image pixel
        local_map = backbone.feature_maps(scaled, options.layer, local_only=True)["local"]
        features = conv_local_features(local_map, stride / seen, (height, width))
        keypoints.append(features.keypoints)
        descriptors.append(features.descriptors)
        norms.append(np.linalg.norm(local_map.reshape(local_map.shape[0], -1), axis=0))
    keep = strongest(np.concatenate(norms), options.max_features)
    return LocalFeatures(np.concatenate(keypoints)[keep], np.concatenate(descriptors)[keep], (height, width))
