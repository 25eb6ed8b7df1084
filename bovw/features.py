"""Local features: keypoint geometry plus one descriptor per keypoint.

``LocalFeatures`` is the common currency of the engine: SIFT produces it here,
convolutional maps produce it in ``cnn``; the vocabulary, the inverted file and
spatial re-ranking only ever see this type.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from bovw.images import ImageOptions, load_image

#: Columns of ``LocalFeatures.keypoints``.
KEYPOINT_COLUMNS = ("x", "y", "scale", "angle")


@dataclass
class LocalFeatures:
    """Features of one image.

    Attributes:
        keypoints: (n, 4) float32: x, y (pixels, in the image as decoded),
            scale (pixels; SIFT's keypoint size / 2), angle (radians).
        descriptors: (n, d) float32.
        image_size: (height, width) of the image the keypoints refer to.
    """

    keypoints: np.ndarray
    descriptors: np.ndarray
    image_size: tuple

    def __post_init__(self):
        self.keypoints = np.asarray(self.keypoints, dtype=np.float32).reshape(-1, 4)
        self.descriptors = np.asarray(self.descriptors, dtype=np.float32)
        if self.descriptors.ndim != 2 or len(self.descriptors) != len(self.keypoints):
            raise ValueError(
                f"descriptors {self.descriptors.shape} do not match keypoints {self.keypoints.shape}")
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))

    def __len__(self) -> int:
        return len(self.keypoints)

    @classmethod
    def empty(cls, dim: int, image_size=(0, 0)) -> "LocalFeatures":
        """No features, descriptor dimension ``dim``."""
        return cls(np.zeros((0, 4), np.float32), np.zeros((0, dim), np.float32), image_size)


def root_sift(descriptors: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """RootSIFT (Arandjelovic & Zisserman 2012): L1-normalise, then element-wise sqrt.

    The result has unit L2 norm, so Euclidean distance between RootSIFT vectors
    is the Hellinger kernel distance between the SIFT histograms.

    Args:
        descriptors: (n, d) non-negative float32.

    Returns:
        (n, d) float32, each row of L2 norm 1 (rows of zeros stay zero).
    """
    descriptors = np.asarray(descriptors, dtype=np.float32)
    l1 = np.abs(descriptors).sum(axis=1, keepdims=True)
    return np.sqrt(descriptors / np.maximum(l1, eps))


@dataclass(frozen=True)
class SiftOptions:
    """SIFT extraction settings (OpenCV's defaults for the detector).

    Attributes:
        root: RootSIFT instead of plain SIFT (L2-normalised either way).
        max_features: keep at most this many keypoints, the strongest
            (largest detector response); 0 keeps all.
        contrast_threshold: OpenCV SIFT's contrastThreshold.
        edge_threshold: OpenCV SIFT's edgeThreshold.
        image: decoding and size limits.
    """

    root: bool = True
    max_features: int = 0
    contrast_threshold: float = 0.04
    edge_threshold: float = 10.0
    image: ImageOptions = ImageOptions()

    @property
    def key(self) -> str:
        """A string that changes whenever the extracted features would."""
        return (f"sift-v1-root{int(self.root)}-max{self.max_features}-c{self.contrast_threshold}"
                f"-e{self.edge_threshold}-side{self.image.max_side}")

    #: SIFT describes grayscale images.
    color = False

    def extract(self, gray: np.ndarray) -> "LocalFeatures":
        """Features of an (h, w) uint8 grayscale image (``sift_from_array``)."""
        return sift_from_array(gray, self)


def sift_from_array(gray: np.ndarray, options: SiftOptions = SiftOptions()) -> LocalFeatures:
    """Detect and describe SIFT keypoints of a grayscale image.

    Args:
        gray: (h, w) uint8 image.
        options: extraction settings.

    Returns:
        LocalFeatures with 128-d descriptors (RootSIFT or L2-normalised SIFT),
        keypoints sorted by decreasing detector response.
    """
    sift = cv2.SIFT_create(contrastThreshold=options.contrast_threshold,
                           edgeThreshold=options.edge_threshold)
    cv_keypoints, descriptors = sift.detectAndCompute(gray, None)
    if not cv_keypoints:
        return LocalFeatures.empty(128, gray.shape[:2])
    order = np.argsort([-kp.response for kp in cv_keypoints], kind="stable")
    if options.max_features > 0:
        order = order[: options.max_features]
    keypoints = np.array(
        [(kp.pt[0], kp.pt[1], kp.size / 2.0, np.deg2rad(kp.angle)) for kp in cv_keypoints],
        dtype=np.float32)[order]
    descriptors = descriptors[order]
    if options.root:
        descriptors = root_sift(descriptors)
    else:
        norms = np.linalg.norm(descriptors, axis=1, keepdims=True)
        descriptors = descriptors / np.maximum(norms, 1e-12)
    return LocalFeatures(keypoints, descriptors, gray.shape[:2])


def extract_sift(path: str, options: SiftOptions = SiftOptions()) -> LocalFeatures:
    """Decode ``path`` and extract its SIFT features.

    Raises:
        bovw.images.ImageReadError: the file cannot be used as an image.
    """
    return sift_from_array(load_image(path, options.image), options)
