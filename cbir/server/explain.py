"""Why a result matched: the geometry behind one search result, for drawing.

Every position is normalised to its image, x and y in [0, 1] of the width and
height of the image as shown (the query as given, the result as indexed), so a
page draws them at any display size:

- verified SIFT results: the inlier pairs and the query frame mapped by the
  homography (``kind`` ``lines``);
- unverified SIFT results: pairs of features quantized to the same visual word,
  each word seen once on each side (``words``);
- BLCF results: the result's conv cells whose word the query has, and the best
  window of local search (``cells``);
- CNN global descriptors: the R-MAC regions of the result closest to the query
  descriptor, the ones region re-ranking scores by (``regions``; for other poolings
  the regions are MAC-pooled and whitened the same way, an approximation).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from cbir.fusion_index import FusionIndex, FusionQuery
from cbir.global_index import GlobalIndex, GlobalQuery
from cbir.retrieval_index import RetrievalIndex
from cnn.global_descriptors import GlobalDescriptorConfig, embed, raw_vectors, rmac_boxes
from index.ranking import LocalQuery
from index.results import SearchResult
from index.window_search import best_window

#: Most lines or cells returned for one result (enough to see; bounded for the page).
MAX_PAIRS = 300
#: Best R-MAC regions returned.
TOP_REGIONS = 3


def explain(index, prepared, result: SearchResult, result_path: str, frame: tuple[float, float, float, float],
            frame_size: tuple[int, int]) -> dict:
    """The geometry of one result.

    Args:
        index: the searchable index that ranked ``result``.
        prepared: the query as that index prepared it.
        result: one of its results.
        result_path: the result's image file.
        frame: (x0, y0, x1, y1) part of the query image, normalised, that the query keypoints
            refer to (the box for SIFT with a box, else the whole image).
        frame_size: (width, height) in pixels of that part as extracted.

    Returns:
        JSON-ready dict: ``kind``, ``summary`` (one line), and per kind ``query_points`` /
        ``result_points`` ((m, 2) lists), ``outline`` (4 corners in the result), ``result_boxes``
        and ``query_boxes`` ((m, 4) x0, y0, x1, y1 lists), ``scores``.
    """
    owner, slot = index.owner(result.slot)
    if owner is not index:  # the shard holding the image explains it (shards share the idf)
        return explain(owner, prepared, dataclasses.replace(result, slot=slot), result_path, frame, frame_size)
    if isinstance(index, FusionIndex):
        assert isinstance(prepared, FusionQuery)
        if result.matches is not None:
            return explain(index.local, prepared.local, result, result_path, frame, frame_size)
        return explain(index.dense, prepared.dense, result, result_path, frame, frame_size)
    if isinstance(index, RetrievalIndex):
        return _explain_local(index, prepared, result, frame, frame_size)
    if isinstance(index, GlobalIndex):
        return _explain_regions(index, prepared, result, result_path)
    return {"kind": "none", "summary": f"no match view for a {type(index).__name__}"}


def query_frame(index, box, image_size: tuple[int, int]) -> tuple[float, float, float, float]:
    """The normalised part of a (width, height) query image that ``index``'s query keypoints refer
    to: the box for a SIFT index (the crop is extracted), the whole image otherwise."""
    local = index.local if isinstance(index, FusionIndex) else index
    if box is None or local.KIND != "local" or local.pipeline.build.conv is not None:
        return 0.0, 0.0, 1.0, 1.0
    width, height = image_size
    x0, y0, x1, y1 = box
    return max(x0, 0) / width, max(y0, 0) / height, min(x1, width) / width, min(y1, height) / height


def _to_frame(points: np.ndarray, frame, frame_size) -> np.ndarray:
    """(m, 2) pixels of the extracted query part -> normalised coordinates of the whole query."""
    scale = np.array([(frame[2] - frame[0]) / frame_size[0], (frame[3] - frame[1]) / frame_size[1]])
    return points * scale + np.array(frame[:2])


def _rounded(array: np.ndarray) -> list:
    return np.round(np.asarray(array, np.float64), 4).tolist()


def _explain_local(index: RetrievalIndex, prepared: LocalQuery, result: SearchResult, frame, frame_size) -> dict:
    keypoints, words = index.images.features(result.slot)
    height, width = (int(v) for v in index.images.image_sizes[result.slot])
    size = np.array([width, height], np.float64)
    if result.matches is not None and len(result.matches):
        pairs = np.unique(np.asarray(result.matches), axis=0)[:MAX_PAIRS]  # one line per feature pair
        facts = {"kind": "lines", "summary": f"{result.inliers} inliers of a homography",
                 "query_points": _rounded(_to_frame(prepared.keypoints[pairs[:, 0], :2], frame, frame_size)),
                 "result_points": _rounded(keypoints[pairs[:, 1], :2] / size)}
        if result.homography is not None:
            fw, fh = frame_size
            corners = np.array([[0, 0, 1], [fw, 0, 1], [fw, fh, 1], [0, fh, 1]], np.float64)
            mapped = corners @ np.asarray(result.homography, np.float64).T
            if np.all(mapped[:, 2] > 1e-9):
                facts["outline"] = _rounded(mapped[:, :2] / mapped[:, 2:] / size)
        return facts
    if index.pipeline.build.conv is not None:
        return _explain_cells(index, prepared, keypoints, words, size, frame, frame_size)
    query_slots, result_slots = _single_word_pairs(prepared.words[:, 0], words)
    return {"kind": "words", "summary": f"{len(query_slots)} visual words seen once in each image (not verified)",
            "query_points": _rounded(_to_frame(prepared.keypoints[query_slots[:MAX_PAIRS], :2], frame, frame_size)),
            "result_points": _rounded(keypoints[result_slots[:MAX_PAIRS], :2] / size)}


def _single_word_pairs(query_words: np.ndarray, words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(query feature, result feature) index pairs of the words that each image has exactly once."""
    sides = []
    for side in (query_words, words):
        unique, first, counts = np.unique(side, return_index=True, return_counts=True)
        sides.append((unique[counts == 1], first[counts == 1]))
    _, q_index, r_index = np.intersect1d(sides[0][0], sides[1][0], return_indices=True)
    return sides[0][1][q_index], sides[1][1][r_index]


def _explain_cells(index: RetrievalIndex, prepared: LocalQuery, keypoints, words, size, frame, frame_size) -> dict:
    common = np.isin(words, prepared.words)
    cells = _cells(keypoints[common]) / np.r_[size, size]
    query_cells = _cells(prepared.keypoints[np.isin(prepared.words[:, 0], words)])
    query_boxes = np.c_[_to_frame(query_cells[:, :2], frame, frame_size),
                        _to_frame(query_cells[:, 2:], frame, frame_size)]
    facts = {"kind": "cells", "summary": f"{int(common.sum())} of {len(words)} conv cells carry a word of the query",
             "result_boxes": _rounded(cells[:MAX_PAIRS]), "query_boxes": _rounded(query_boxes[:MAX_PAIRS])}
    if not index.pipeline.build.conv.one_grid:  # several grids or selected positions: no window of one map
        return facts
    score, window = best_window(*index.inverted_file.query_vector(prepared.words), index.inverted_file.idf,
                                keypoints, words)
    if window is not None:
        y0, x0, y1, x1 = window
        facts["window"] = _rounded(np.array([x0, y0, x1, y1]) * keypoints[0, 2] / np.r_[size, size])
        facts["summary"] += f"; best window scores {score:.3f}"
    return facts


def _cells(keypoints: np.ndarray) -> np.ndarray:
    """(n, 4) x0, y0, x1, y1 pixels of the conv cells at (n, 4) grid keypoints (their scale is the stride)."""
    half = keypoints[:, 2:3] / 2
    return np.c_[keypoints[:, :2] - half, keypoints[:, :2] + half]


def _explain_regions(index: GlobalIndex, prepared: GlobalQuery, result: SearchResult, path: str) -> dict:
    whitening = index.whitening
    if index.head is not None:
        if index.head.pooling is None or index.head.pooling.method != "rmac":
            return {"kind": "none", "summary": f"a trained {index.head.kind} head describes whole images only; "
                                              "no region view"}
        whitening = index.head.whitening
    maps = index.extractor(path, store=False)["global"]  # one per scale
    regions = GlobalDescriptorConfig("rmac", rmac_levels=index.pipeline.build.descriptor.rmac_levels)
    _, rows = embed(raw_vectors(maps, regions), whitening, regions)
    boxes = rmac_boxes(maps, regions.rmac_levels)
    scores = rows @ prepared.descriptor
    best = np.argsort(-scores, kind="stable")[:TOP_REGIONS]
    return {"kind": "regions", "summary": f"best R-MAC region of the result scores {scores[best[0]]:.3f} "
                                          f"with the query (whole image: {result.score:.3f})",
            "result_boxes": _rounded(boxes[best]), "scores": _rounded(scores[best])}
