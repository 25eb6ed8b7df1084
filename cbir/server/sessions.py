"""Queries a server keeps between requests: the image, its box, and each ranking made
for it, so that paging, the match view and a second pipeline reuse the work done.

A query is identified by what it is (a hash of the uploaded bytes, or of the index
and image name) and its box: asking the same query again finds the same session.
"""
from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from cbir.server.explain import query_frame
from cbir.server.served import ServedIndex
from index.results import SearchResult

#: Queries kept (least recently used dropped first); an upload holds its decoded image.
MAX_SESSIONS = 32
#: Results kept per ranking: pages reach this far (the collection's size when smaller).
MAX_RANKED = 1000


@dataclass
class Ranking:
    """One pipeline's ranking of a query: results best first and milliseconds taken
    (extraction, quantization and ranking; the first search of a session)."""

    results: list[SearchResult]
    elapsed_ms: float
    prepared: object


@dataclass
class QuerySession:
    """A query image and what was computed for it.

    Attributes:
        id: stable identifier (``session_id`` of ``key`` and ``box``).
        key: what the query image is: a hash of the uploaded bytes, or the indexed file's real path.
        label: what the user knows it by (upload file name, or index/name).
        source: the indexed image's file, or the decoded upload ((h, w, 3) uint8 RGB).
        size: (width, height) of the image as given, the frame of ``box``.
        box: (x0, y0, x1, y1) pixels of that image, or None.
        rankings: (index id, pipeline) -> Ranking.
        frames: index id -> what ``frame`` returns.
    """

    id: str
    key: bytes
    label: str
    source: str | np.ndarray
    size: tuple[int, int]
    box: tuple | None = None
    rankings: dict = field(default_factory=dict)
    frames: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def describe(self) -> dict:
        """JSON facts: id, label, ``image`` (the same for every box of one image), size and box."""
        return {"id": self.id, "image": hashlib.sha256(self.key).hexdigest()[:16], "label": self.label,
                "width": self.size[0], "height": self.size[1],
                "box": None if self.box is None else [round(v, 1) for v in self.box]}

    def ranking(self, served: ServedIndex, pipeline: str, n_jobs: int = 1) -> Ranking:
        """The ranking of this query by ``pipeline`` on ``served`` (computed once).

        Raises:
            KeyError: the pipeline does not apply to the index.
            ValueError: a bad box.
            bovw.images.ImageReadError: the query file cannot be read.
        """
        options = served.options(pipeline)
        key = (served.id, pipeline)
        with self._lock:
            if key not in self.rankings:
                start = time.perf_counter()
                prepared = served.index.prepare_query(self.source, self.box, options)
                results = served.index.search(prepared, top_k=MAX_RANKED, options=options, n_jobs=n_jobs)
                self.rankings[key] = Ranking(results, (time.perf_counter() - start) * 1e3, prepared)
            return self.rankings[key]

    def frame(self, served: ServedIndex) -> tuple[tuple[float, float, float, float], tuple[int, int]]:
        """(normalised part of the query image its keypoints refer to, that part's (width, height)
        in pixels as extracted) for ``served``'s index (the image is decoded once per index)."""
        with self._lock:
            if served.id not in self.frames:
                frame = query_frame(served.index, self.box, self.size)
                index = getattr(served.index, "local", served.index)
                extracted = index.query_image(self.source, self.box if frame != (0.0, 0.0, 1.0, 1.0) else None)
                self.frames[served.id] = frame, (extracted.shape[1], extracted.shape[0])
            return self.frames[served.id]


def session_id(key: bytes, box) -> str:
    """Identifier of a query: a hash of what its image is (``QuerySession.key``) and its box."""
    digest = hashlib.sha256(key)
    digest.update(repr(None if box is None else tuple(round(v, 1) for v in box)).encode())
    return digest.hexdigest()[:20]


def content_key(content: bytes) -> bytes:
    """``QuerySession.key`` of an uploaded file's bytes."""
    return hashlib.sha256(content).digest()


class SessionStore:
    """The most recent ``MAX_SESSIONS`` queries, by id (thread-safe)."""

    def __init__(self, capacity: int = MAX_SESSIONS):
        self.capacity = capacity
        self._sessions: OrderedDict[str, QuerySession] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, query_id: str) -> QuerySession:
        """The session (KeyError when unknown or dropped)."""
        with self._lock:
            if query_id not in self._sessions:
                raise KeyError(f"unknown query {query_id!r} (expired or never made; search again)")
            self._sessions.move_to_end(query_id)
            return self._sessions[query_id]

    def add(self, session: QuerySession) -> QuerySession:
        """Keep ``session``, or return the one already kept under its id."""
        with self._lock:
            kept = self._sessions.setdefault(session.id, session)
            self._sessions.move_to_end(session.id)
            while len(self._sessions) > self.capacity:
                self._sessions.popitem(last=False)
            return kept
