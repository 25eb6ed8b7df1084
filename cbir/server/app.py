"""``cbir serve``: the web page and JSON API over saved indexes.

FastAPI on uvicorn: typed query parameters checked before any handler runs, the
API described at ``/openapi.json`` for scripts, uploads parsed by Starlette, blocking
searches run on its thread pool while the event loop keeps answering. The page
is plain HTML, CSS and JavaScript served from the package (no build step).

Endpoints (JSON unless said; errors are ``{"detail": "one line"}`` with 400 for a
bad image, box or option, 404 for an unknown index, image, query or pipeline,
413 for an upload over the limit, 500 for anything else, the server going on):

- ``GET /api/indexes``: the served indexes (pipeline, image count, the pipelines
  that can search them, benchmark); ``GET /api/indexes/{index}``: its full ``info``.
- ``GET /api/indexes/{index}/names?offset=&limit=&contains=``: image names, paged.
- ``GET /api/indexes/{index}/images/{name}?size=``: an indexed image as JPEG.
- ``POST /api/search`` (form): the query as ``file`` (upload), ``index`` + ``name``
  (an indexed image or a benchmark query), or ``query`` (a previous query's id, to
  search it again with another ``box``); ``box`` ``x0,y0,x1,y1`` in pixels of the
  query image; one ``target`` ``INDEX:PIPELINE`` per ranking wanted; ``limit``.
  Returns the query and the first page of each ranking.
- ``GET /api/queries/{id}/results?target=&offset=&limit=``: more of a ranking.
- ``GET /api/queries/{id}/image?size=``: the query image as JPEG.
- ``GET /api/queries/{id}/match?target=&name=``: why a result matched (see
  ``cbir.server.explain``).
- ``GET /api/evaluation?target=``: per-query scores on the index's benchmark.
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
from importlib import resources

import numpy as np

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from bovw.images import ImageOptions, ImageReadError, load_image, resize_to_max_side, upright_size
from cbir.searchable import parse_box
from cbir.server.explain import explain
from cbir.server.served import (IMAGE_SIDES, ServedIndex, encode_jpeg, image_side, jpeg_of, load_served,
                                parse_benchmark)
from cbir.server.sessions import MAX_RANKED, QuerySession, SessionStore, content_key, session_id

logger = logging.getLogger("cbir")

#: Largest decoded upload (width x height): a 40-megapixel photo is 120 MB as RGB.
UPLOAD_MAX_PIXELS = 40_000_000
#: Results per page unless asked otherwise, and at most.
PAGE, MAX_PAGE = 24, 200
#: Multipart overhead allowed beyond the upload limit (boundaries, the other fields).
FORM_OVERHEAD = 64 * 1024
CACHE_HEADERS = {"Cache-Control": "public, max-age=3600"}


class UploadTooLarge(Exception):
    """A request body over the server's upload limit."""


class UploadLimit:
    """ASGI middleware refusing request bodies over ``max_bytes``: at once when the declared length
    says so, else as soon as the bytes received pass it (nothing larger is ever buffered)."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            response = JSONResponse({"detail": self.message()}, status_code=413)
            return await response(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise UploadTooLarge(self.message())
            return message
        return await self.app(scope, limited_receive, send)

    def message(self) -> str:
        return f"upload larger than the server's limit of {(self.max_bytes - FORM_OVERHEAD) / 2 ** 20:.1f} MB"


def create_app(served: dict[str, ServedIndex], max_upload_bytes: int = 20 * 2 ** 20, n_jobs: int = 1) -> FastAPI:
    """The FastAPI application over loaded indexes (``load_served``)."""
    if not served:
        raise ValueError("no index to serve")
    # Swagger UI and ReDoc load their scripts from a CDN: /openapi.json describes the API offline.
    app = FastAPI(title="cbir", description="Search image collections by example.", version="1",
                  docs_url=None, redoc_url=None)
    app.add_middleware(UploadLimit, max_bytes=max_upload_bytes + FORM_OVERHEAD)
    sessions = SessionStore()
    static = resources.files("cbir.server") / "static"

    def error(status: int):
        async def handler(request: Request, exc: Exception):
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            return JSONResponse({"detail": str(message)}, status_code=status)
        return handler
    app.add_exception_handler(KeyError, error(404))
    app.add_exception_handler(FileNotFoundError, error(404))
    app.add_exception_handler(ValueError, error(400))
    app.add_exception_handler(ImageReadError, error(400))
    app.add_exception_handler(UploadTooLarge, error(413))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())[1:]) or "request"
        return JSONResponse({"detail": f"{where}: {first.get('msg', 'invalid')}"}, status_code=400)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        logger.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error: {exc.__class__.__name__}: {exc}"}, status_code=500)

    def index_of(index_id: str) -> ServedIndex:
        if index_id not in served:
            raise KeyError(f"no index {index_id!r} is served (served: {', '.join(served)})")
        return served[index_id]

    def resolve(spec: str) -> tuple[ServedIndex, str]:
        index_id, sep, pipeline = spec.rpartition(":")
        if not sep:
            served_index = index_of(spec)
            return served_index, served_index.pipelines[0]
        return index_of(index_id), pipeline

    def page(session: QuerySession, spec: str, offset: int, limit: int) -> dict:
        served_index, pipeline = resolve(spec)
        ranking = session.ranking(served_index, pipeline, n_jobs)
        note = None if ranking.results else ("the query has no features (a box too small or too plain?)"
                                              if len(served_index.index) else "the index is empty")
        return {"target": f"{served_index.id}:{pipeline}", "index": served_index.id, "pipeline": pipeline,
                "note": note, "elapsed_ms": round(ranking.elapsed_ms, 1), "total": len(ranking.results),
                "collection": len(served_index.index), "offset": offset,
                "results": [{"rank": offset + i + 1, "name": r.name, "score": round(float(r.score), 5),
                             "inliers": r.inliers}
                            for i, r in enumerate(ranking.results[offset:offset + limit])]}

    @app.get("/", include_in_schema=False)
    def home():
        return FileResponse(str(static / "index.html"))

    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/api/indexes")
    def indexes() -> list[dict]:
        return [s.describe() for s in served.values()]

    @app.get("/api/indexes/{index_id}")
    def index_info(index_id: str) -> dict:
        served_index = index_of(index_id)
        return {**served_index.describe(), "info": served_index.index.info()}

    @app.get("/api/indexes/{index_id}/names")
    def names(index_id: str, offset: int = Query(0, ge=0), limit: int = Query(PAGE, ge=1, le=MAX_PAGE),
              contains: str = "") -> dict:
        index = index_of(index_id).index
        if contains:
            matching = [n for n in index.names if contains.lower() in n.lower()]
            return {"total": len(matching), "offset": offset, "names": matching[offset:offset + limit]}
        return {"total": len(index), "offset": offset,
                "names": [index.names[slot] for slot in range(offset, min(offset + limit, len(index)))]}

    @app.get("/api/indexes/{index_id}/images/{name:path}")
    def image(index_id: str, name: str, size: int = Query(256, ge=16, le=IMAGE_SIDES[-1])):
        path = index_of(index_id).path_of(name)
        return Response(jpeg_of(path, image_side(size)), media_type="image/jpeg", headers=CACHE_HEADERS)

    @app.post("/api/search")
    async def search(request: Request) -> dict:
        form = await request.form(max_files=1, max_fields=32)
        upload = form.get("file")
        content = await upload.read() if upload is not None and not isinstance(upload, str) else None
        filename = os.path.basename(getattr(upload, "filename", None) or "upload")
        if content is not None and len(content) > max_upload_bytes:
            raise UploadTooLarge(f"{filename}: {len(content) / 2 ** 20:.1f} MB, over the server's upload limit of "
                                 f"{max_upload_bytes / 2 ** 20:.1f} MB")
        fields = {key: form.get(key) for key in ("index", "name", "query", "box", "limit")}
        targets = form.getlist("target")
        return await run_in_threadpool(run_search, content, filename, fields, targets)

    def run_search(content: bytes | None, filename: str, fields: dict, targets: list[str]) -> dict:
        box = parse_box(fields["box"]) if fields["box"] else None
        limit = fields["limit"] or str(PAGE)
        if not limit.isdigit() or not 1 <= int(limit) <= MAX_PAGE:
            raise ValueError(f"limit must be a whole number in 1..{MAX_PAGE} (got {limit!r})")
        asked = new_session(content, filename, fields, box)
        session = sessions.add(asked)
        try:
            searches = [page(session, spec, 0, int(limit)) for spec in targets or [next(iter(served))]]
        except ValueError as exc:
            raise ValueError(f"{asked.label}: {exc}") from None
        return {"query": {**session.describe(), "label": asked.label}, "searches": searches}

    def new_session(content: bytes | None, filename: str, fields: dict, box) -> QuerySession:
        if content is not None:
            image, key = decode_upload(content, filename), content_key(content)
            size = (image.shape[1], image.shape[0])
            return QuerySession(session_id(key, clipped(box, size)), key, filename, image, size, clipped(box, size))
        if fields["query"]:
            earlier = sessions.get(fields["query"])
            box = clipped(box, earlier.size)
            return QuerySession(session_id(earlier.key, box), earlier.key, earlier.label, earlier.source, earlier.size,
                                box)
        if not (fields["index"] and fields["name"]):
            raise ValueError("give the query as a file upload, as index and name, or as a previous query id")
        served_index = index_of(fields["index"])
        name = fields["name"]
        benchmark_query = served_index.benchmark_query(name)
        path = served_index.path_of(name) if name in served_index.index or benchmark_query is None \
            else benchmark_query.path
        size = upright_size(path)  # the header: an indexed image was checked when it was indexed
        key, box = os.path.realpath(path).encode(), clipped(box, size)
        return QuerySession(session_id(key, box), key, f"{served_index.id}/{name}", path, size, box)

    @app.get("/api/queries/{query_id}/results")
    def results(query_id: str, target: str, offset: int = Query(0, ge=0, lt=MAX_RANKED),
                limit: int = Query(PAGE, ge=1, le=MAX_PAGE)) -> dict:
        session = sessions.get(query_id)
        return {"query": session.describe(), **page(session, target, offset, limit)}

    @app.get("/api/queries/{query_id}/image")
    def query_image(query_id: str, size: int = Query(1024, ge=16, le=IMAGE_SIDES[-1])):
        source = sessions.get(query_id).source
        if isinstance(source, str):
            return Response(jpeg_of(source, image_side(size)), media_type="image/jpeg", headers=CACHE_HEADERS)
        return Response(encode_jpeg(resize_to_max_side(source, image_side(size))), media_type="image/jpeg",
                        headers=CACHE_HEADERS)

    @app.get("/api/queries/{query_id}/match")
    def match(query_id: str, target: str, name: str) -> dict:
        session = sessions.get(query_id)
        served_index, pipeline = resolve(target)
        ranking = session.ranking(served_index, pipeline, n_jobs)
        found = next(((rank, r) for rank, r in enumerate(ranking.results, 1) if r.name == name), None)
        if found is None:
            raise KeyError(f"{name!r} is not among the {len(ranking.results)} results of this query")
        rank, result = found
        frame, frame_size = session.frame(served_index)
        why = explain(served_index.index, ranking.prepared, result, served_index.path_of(name), frame, frame_size)
        return {"query": session.describe(), "target": f"{served_index.id}:{pipeline}", "name": name,
                "rank": rank, "score": round(float(result.score), 5), "inliers": result.inliers,
                **why}

    @app.get("/api/evaluation")
    def evaluation(target: str) -> dict:
        served_index, pipeline = resolve(target)
        return served_index.evaluation(pipeline)

    return app


def clipped(box, size: tuple[int, int]):
    """A box (x0, y0, x1, y1) cut to a (width, height) image, or None (ValueError when nothing is left)."""
    if box is None:
        return None
    width, height = size
    x0, y0, x1, y1 = max(box[0], 0.0), max(box[1], 0.0), min(box[2], float(width)), min(box[3], float(height))
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise ValueError(f"box {list(box)} keeps less than 2x2 pixels of the {width}x{height} query image")
    return x0, y0, x1, y1


def decode_upload(content: bytes, filename: str) -> np.ndarray:
    """An uploaded image decoded as indexing decodes files ((h, w, 3) uint8 RGB, EXIF applied);
    ImageReadError naming the upload's file name when it cannot be used."""
    suffix = os.path.splitext(filename)[1][:8]
    with tempfile.NamedTemporaryFile(suffix=suffix) as handle:
        handle.write(content)
        handle.flush()
        try:
            return load_image(handle.name, ImageOptions(max_side=0, max_pixels=UPLOAD_MAX_PIXELS), color=True)
        except ImageReadError as exc:
            raise ImageReadError(filename, exc.reason) from None


def serve(directories: list[str], host: str = "127.0.0.1", port: int = 8000, benchmarks: list[str] = (),
          cache_dir: str | None = None, max_upload_bytes: int = 20 * 2 ** 20, n_jobs: int = 1,
          verify: bool = False) -> None:
    """Load the indexes and serve them until interrupted (``cbir serve``).

    Concurrent requests are the server's parallelism, so BLAS runs one thread per request: its
    own threads on top of the requests' fought over the cores (16 clients searching ``rmac`` by
    name: 15-20 requests/s with two BLAS threads, 85-95 with one; ``benchmarks/serve_speed.py``).
    """
    import uvicorn
    from threadpoolctl import threadpool_limits
    threadpool_limits(1, user_api="blas")
    datasets = [parse_benchmark(spec) for spec in benchmarks]
    served = load_served(directories, datasets, cache_dir, verify)
    app = create_app(served, max_upload_bytes, n_jobs)
    for s in served.values():
        print(f"cbir: serving {s.id} ({s.index.pipeline.name}, {len(s.index)} images"
              f"{f', {s.benchmark.name} ground truth' if s.benchmark else ''})", file=sys.stderr)
    print(f"cbir: open http://{host}:{port}/ (API schema at /openapi.json; Ctrl-C stops)", file=sys.stderr)
    uvicorn.run(app, host=host, port=port, log_level="warning")
