"""Pictures of search results: the query beside each top result, inlier matches drawn."""
from __future__ import annotations

import os

import cv2
import numpy as np

from bovw.images import ImageOptions, ImageReadError, load_image


def fit_height(image: np.ndarray, height: int) -> tuple[np.ndarray, float]:
    """(the image resized to ``height`` pixels, aspect kept; the scale applied)."""
    scale = height / image.shape[0]
    return cv2.resize(image, (max(1, round(image.shape[1] * scale)), height)), scale


def stack_rows(rows: list[np.ndarray], fill: int = 0) -> np.ndarray:
    """(h_i, w_i, 3) rows one under the other, each padded on the right with ``fill`` to the widest."""
    width = max(r.shape[1] for r in rows)
    return np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=fill)
                           for r in rows], axis=0)


def draw_results(query_image: np.ndarray, query_keypoints: np.ndarray, results, result_paths: list[str | None],
                 result_keypoints: list[np.ndarray], image_options: ImageOptions, row_height: int = 240) -> np.ndarray:
    """One row per result: the query on the left, the result on the right, inlier matches as lines.

    Args:
        query_image: (h, w, 3) uint8 RGB, the image the query keypoints refer to.
        query_keypoints: (n, 4) float32 keypoints of the query, in pixels of ``query_image``.
        results: SearchResult list (``matches`` set for verified results).
        result_paths: image file of each result, or None when it cannot be found.
        result_keypoints: (n_i, 4) keypoints of each result, as stored in the index.
        image_options: how the index decoded images (so keypoints line up).
        row_height: pixels per row.

    Returns:
        (rows * row_height, w, 3) uint8 RGB picture.
    """
    left, q_scale = fit_height(query_image, row_height)
    rows = []
    for result, path, keypoints in zip(results, result_paths, result_keypoints):
        try:
            right_image = load_image(path, image_options, color=True) if path else None
        except ImageReadError:
            right_image = None
        if right_image is None:
            right_image = np.full((row_height, row_height, 3), 128, np.uint8)
        right, r_scale = fit_height(right_image, row_height)
        row = np.concatenate([left, right], axis=1).copy()
        if result.matches is not None:
            for qi, di in result.matches:
                p = tuple(int(v) for v in query_keypoints[qi, :2] * q_scale)
                q = tuple(int(v) for v in keypoints[di, :2] * r_scale + [left.shape[1], 0])
                cv2.line(row, p, q, (0, 255, 0), 1, cv2.LINE_AA)
        label = f"{os.path.basename(result.name)}  score {result.score:.3f}" + \
            (f"  inliers {result.inliers}" if result.inliers is not None else "")
        cv2.putText(row, label, (left.shape[1] + 4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 0), 1, cv2.LINE_AA)
        rows.append(row)
    if not rows:
        return left
    return stack_rows(rows)
