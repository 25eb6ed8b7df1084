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


#: Side of the grid of cells over which ``select_features`` spreads its quota (8 x 8 cells).
GRID = 8
#: Images of at most this many pixels per budgeted feature are described in one OpenCV call and
#: selected afterwards: describing only the selected keypoints takes a second call, which builds
#: the Gaussian pyramid again, and pays off only when it saves enough descriptors. Measured with
#: budget 2500 on Sacre-Coeur photos (one thread): two calls were 0.02-0.04 s slower at 500-800 px
#: (169k-433k pixels, 2,500-6,200 keypoints) and 0.03-0.1 s (7-27%) faster at 1024 px (708k
#: pixels, 10,900 keypoints); 240 * 2500 = 600k pixels sits between (about 900 x 670).
DESCRIBE_ALL_PIXELS_PER_FEATURE = 240
#: Pyramid octaves that share the octave quota: OpenCV's SIFT has at most 8 at 1024 px (octave -1,
#: the image up-sampled 2x, then 0..6).
OCTAVE_SLOTS = 8


@dataclass(frozen=True)
class SiftOptions:
    """SIFT extraction settings (OpenCV's defaults for the detector).

    Attributes:
        root: RootSIFT instead of plain SIFT (L2-normalised either way).
        max_features: the feature budget: keep at most this many keypoints per image,
            chosen by ``select_features`` (on large images before their descriptors are
            computed); 0 keeps all.
        spread: fraction of the budget reserved for spreading the features over the
            image and the scales (``select_features``); 0 keeps the strongest
            (largest detector response) only. The default 0.5 guarantees every cell of
            the image a few features; it neither helped nor hurt measurably on Sacre-Coeur
            photos among distractors (partial-view mAP within 0.004 of spread 0 at budgets
            2000 and 2500, benchmarks/results/feature_budget.md), where the landmark fills
            most of each photo.
        contrast_threshold: OpenCV SIFT's contrastThreshold (of images of at most
            ``contrast_reference_pixels`` pixels when that is set).
        contrast_reference_pixels: 0 (default): one contrast threshold for every image size.
            Otherwise images of more pixels than this (height x width) are detected with a
            threshold rising with their pixel count (``contrast_threshold_for``), so those of
            at most this many keep ``contrast_threshold`` and exactly the same features.
            With 120,000 (400 x 300, the largest Holidays/UKBench image) and growth 1, a
            1024-px photo is detected at 0.03 instead of 0.005 and its 512-px quarters at
            0.0075: with the 2,500 budget, quarter-photo queries among distractors gained
            0.010-0.011 mAP, whole photos were unchanged (one landmark, Sacre-Coeur;
            benchmarks/results/feature_budget_threshold.md).
        contrast_growth: exponent of that rise: the threshold is ``contrast_threshold *
            (pixels / contrast_reference_pixels) ** contrast_growth``; 0.5 scales it with the
            image side, 1 with its area.
        edge_threshold: OpenCV SIFT's edgeThreshold.
        image: decoding and size limits.
    """

    root: bool = True
    max_features: int = 0
    spread: float = 0.5
    contrast_threshold: float = 0.04
    contrast_reference_pixels: int = 0
    contrast_growth: float = 0.5
    edge_threshold: float = 10.0
    image: ImageOptions = ImageOptions()

    def __post_init__(self):
        if self.max_features < 0 or not 0.0 <= self.spread <= 1.0:
            raise ValueError(f"max_features must be >= 0 and spread in [0, 1] "
                             f"(got {self.max_features}, {self.spread})")
        if self.contrast_reference_pixels < 0 or self.contrast_growth < 0:
            raise ValueError(f"contrast_reference_pixels and contrast_growth must be >= 0 "
                             f"(got {self.contrast_reference_pixels}, {self.contrast_growth})")

    def contrast_threshold_for(self, image_size: tuple) -> float:
        """The contrast threshold an image of ``image_size`` (height, width) in pixels is detected
        with: ``contrast_threshold`` up to ``contrast_reference_pixels`` pixels (or when that is
        0), then ``contrast_threshold * (pixels / contrast_reference_pixels) ** contrast_growth``."""
        pixels = int(image_size[0]) * int(image_size[1])
        if not self.contrast_reference_pixels or pixels <= self.contrast_reference_pixels:
            return self.contrast_threshold
        return self.contrast_threshold * (pixels / self.contrast_reference_pixels) ** self.contrast_growth

    @property
    def key(self) -> str:
        """A string that changes whenever the extracted features would (without a budget it is
        the key of the versions before the budget, and without a size-dependent threshold that of
        the versions before it, so their feature caches stay valid)."""
        selection = f"-spread{self.spread}" if self.max_features > 0 else ""
        growth = (f"-cref{self.contrast_reference_pixels}-cgrowth{self.contrast_growth}"
                  if self.contrast_reference_pixels else "")
        return (f"sift-v1-root{int(self.root)}-max{self.max_features}{selection}-c{self.contrast_threshold}"
                f"{growth}-e{self.edge_threshold}-side{self.image.max_side}")

    #: SIFT describes grayscale images.
    color = False

    def extract(self, gray: np.ndarray) -> "LocalFeatures":
        """Features of an (h, w) uint8 grayscale image (``sift_from_array``)."""
        return sift_from_array(gray, self)


def _ranks_within(groups: np.ndarray) -> np.ndarray:
    """(n,) int64: each element's position among the elements of its group, in array order.

    Args:
        groups: (n,) int group ids.
    """
    order = np.argsort(groups, kind="stable")
    ordered = groups[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ranks = np.empty(len(groups), np.int64)
    ranks[order] = np.arange(len(groups)) - np.repeat(starts, np.diff(np.r_[starts, len(groups)]))
    return ranks


def select_features(xy: np.ndarray, octaves: np.ndarray, image_size: tuple, budget: int,
                    spread: float = 0.5) -> np.ndarray:
    """The keypoints a feature budget keeps, spread over the image and over the scales.

    With ``reserved = spread * budget``, a keypoint is *reserved* when it is among the
    ``reserved / (2 * GRID**2)`` strongest of its cell of a ``GRID`` x ``GRID`` grid over
    the image, or among the ``reserved / (2 * OCTAVE_SLOTS)`` strongest of its pyramid
    octave. The reserved keypoints come first, the others after them, each in response
    order, and the first ``budget`` are kept: a weakly textured region or a coarse scale
    keeps its strongest few even where the strongest responses of the image are all
    elsewhere, and the rest of the budget goes to the strongest. Deterministic.

    Args:
        xy: (n, 2) keypoint positions (x, y) in pixels, sorted by decreasing response.
        octaves: (n,) int pyramid octave of each keypoint (``_octaves``).
        image_size: (height, width) of the image.
        budget: at most this many keypoints are kept; 0 keeps all.
        spread: fraction of the budget reserved as above; 0 keeps the ``budget`` strongest.

    Returns:
        (k,) int64 indices into ``xy``, ascending (so still in response order),
        k = min(n, budget) (n when ``budget`` is 0).
    """
    n = len(xy)
    if budget <= 0 or n <= budget:
        return np.arange(n)
    reserved = spread * budget
    height, width = image_size
    column = np.clip((xy[:, 0] * GRID / width).astype(np.int64), 0, GRID - 1)
    row = np.clip((xy[:, 1] * GRID / height).astype(np.int64), 0, GRID - 1)
    first = ((_ranks_within(row * GRID + column) < int(reserved / (2 * GRID * GRID)))
             | (_ranks_within(np.asarray(octaves, np.int64)) < int(reserved / (2 * OCTAVE_SLOTS))))
    return np.sort(np.argsort(~first, kind="stable")[:budget])


def _octaves(cv_keypoints) -> np.ndarray:
    """(n,) int64 pyramid octave of OpenCV SIFT keypoints (-1: the image up-sampled 2x)."""
    packed = np.array([kp.octave for kp in cv_keypoints], dtype=np.int64) & 255
    return packed.astype(np.uint8).view(np.int8).astype(np.int64)


def _describe(sift, gray: np.ndarray, keypoints: list, detected: list) -> np.ndarray:
    """(len(keypoints), 128) float32 SIFT descriptors of ``keypoints``, a subset of ``detected``,
    exactly as ``detectAndCompute`` gives them for ``detected``.

    OpenCV's ``compute`` builds its Gaussian pyramid from the lowest octave among the keypoints
    it is given: without one of octave -1 it skips the 2x up-sampling and every descriptor
    changes. So when ``detected`` has such a keypoint and ``keypoints`` does not, one is
    described along with them and dropped.
    """
    detected_low = np.flatnonzero(_octaves(detected) < 0)
    pin = [] if not len(detected_low) or (_octaves(keypoints) < 0).any() else [detected[detected_low[0]]]
    described, descriptors = sift.compute(gray, pin + list(keypoints))
    if len(described) != len(pin) + len(keypoints):
        raise RuntimeError("OpenCV SIFT dropped keypoints while describing them")
    return descriptors[len(pin):]


def sift_from_array(gray: np.ndarray, options: SiftOptions = SiftOptions()) -> LocalFeatures:
    """Detect and describe SIFT keypoints of a grayscale image.

    The detector's contrast threshold depends on the image size when
    ``options.contrast_reference_pixels`` is set (``SiftOptions.contrast_threshold_for``).
    With a budget (``options.max_features``) the keypoints are selected by
    ``select_features``. On images of more than ``DESCRIBE_ALL_PIXELS_PER_FEATURE``
    pixels per budgeted feature they are detected, selected, and only the selected ones
    described; smaller images are described whole and then selected. Either way the
    keypoints and descriptors are those of describing all and selecting afterwards.

    Args:
        gray: (h, w) uint8 image.
        options: extraction settings.

    Returns:
        LocalFeatures with 128-d descriptors (RootSIFT or L2-normalised SIFT),
        keypoints sorted by decreasing detector response.
    """
    sift = cv2.SIFT_create(contrastThreshold=options.contrast_threshold_for(gray.shape[:2]),
                           edgeThreshold=options.edge_threshold)
    budget = options.max_features
    if budget > 0 and gray.size > DESCRIBE_ALL_PIXELS_PER_FEATURE * budget:
        cv_keypoints, descriptors = sift.detect(gray, None), None
    else:
        cv_keypoints, descriptors = sift.detectAndCompute(gray, None)
    if not cv_keypoints:
        return LocalFeatures.empty(128, gray.shape[:2])
    order = np.argsort([-kp.response for kp in cv_keypoints], kind="stable")
    keypoints = np.array(
        [(kp.pt[0], kp.pt[1], kp.size / 2.0, np.deg2rad(kp.angle)) for kp in cv_keypoints],
        dtype=np.float32)[order]
    keep = select_features(keypoints[:, :2], _octaves(cv_keypoints)[order], gray.shape[:2], budget, options.spread)
    order, keypoints = order[keep], keypoints[keep]
    if descriptors is None:
        descriptors = _describe(sift, gray, [cv_keypoints[i] for i in order], cv_keypoints)
    else:
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
