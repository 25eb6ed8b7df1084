"""What every searchable collection is: the interface and the plumbing written once.

``SearchableIndex`` is the one interface of the engine's collections (the SIFT,
Hamming-embedding and BLCF inverted-file index, the CNN global index, and the
learned, diffused, fused and sharded ones): ``add_images``, ``remove``,
``prepare_query``, ``search``, ``save``, ``load``, ``info``. It owns what they share: the
name registry, the read/write lock, batching of additions, query decoding and box
cropping, search options, and pickle-free persistence. A subclass supplies its
stores, how a file becomes features, how a query is prepared and how it is ranked
(a pure function of ``index.ranking``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from typing import Callable, Iterable, Sequence

import numpy as np

from bovw.extraction import ExtractionReport, iter_features
from bovw.feature_cache import FeatureCache
from bovw.images import ImageOptions, load_image, resize_to_max_side
from cbir.pipelines import Pipeline, check_search_options, get_pipeline, pipeline_from_format1
from index.names import ImageNames
from index.persistence import IndexFormatError, load_arrays, read_manifest, save_arrays
from index.ranking import RankedImage, best_per_image
from index.results import SearchResult
from index.rw_lock import ReadWriteLock
from index.search_options import SearchOptions

logger = logging.getLogger("cbir")

#: Version of the saved layout. 2: build settings apart from search options, names in their own
#: registry, compact keypoints and words, signatures only in the postings, no SIFT placeholders in
#: global indexes. Version-1 saves still load (converted).
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
#: A build adds extracted images in batches of at most this many images and bytes of features,
#: so its memory stays bounded whatever the collection size (conv maps of one 1024-px photo
#: weigh ~8 MB: 1000 of them held 7.9 GB before the byte bound).
ADD_BATCH = 1000
ADD_BATCH_BYTES = 256 * 2 ** 20
#: Saved format name -> index class (filled by ``SearchableIndex.__init_subclass__``).
INDEX_CLASSES: dict[str, type] = {}


def parse_box(box) -> tuple[float, float, float, float]:
    """A query box (x0, y0, x1, y1) in pixels, from a sequence or an ``x0,y0,x1,y1`` string.

    Raises:
        ValueError: not four numbers, or x1 <= x0 or y1 <= y0.
    """
    values = box.split(",") if isinstance(box, str) else list(box)
    try:
        x0, y0, x1, y1 = (float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"a box is four numbers x0,y0,x1,y1 (got {box!r})") from None
    if not np.all(np.isfinite([x0, y0, x1, y1])):
        raise ValueError(f"a box is four finite numbers x0,y0,x1,y1 (got {box!r})")
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box {box!r} is empty: x1 must exceed x0 and y1 must exceed y0")
    return x0, y0, x1, y1


def crop(image: np.ndarray, box) -> np.ndarray:
    """The part of ``image`` inside ``box`` (x0, y0, x1, y1) pixels (ValueError if outside it)."""
    x0, y0, x1, y1 = (int(round(v)) for v in parse_box(box))
    height, width = image.shape[:2]
    part = image[max(y0, 0):min(y1, height), max(x0, 0):min(x1, width)]
    if min(part.shape[:2]) < 2:
        raise ValueError(f"box {box!r} keeps less than 2x2 pixels of the {width}x{height} query image")
    return part


def rotate_query(image: np.ndarray, box, degrees: int) -> tuple[np.ndarray, tuple | None]:
    """``image`` (h, w[, 3]) turned counter-clockwise by ``degrees`` (a multiple of 90, as
    ``np.rot90``), and ``box`` (x0, y0, x1, y1 pixels of ``image``, or None) turned with it."""
    if degrees % 90:
        raise ValueError(f"a query turns by quarter turns only (got {degrees} degrees)")
    turns = degrees // 90 % 4
    rotated = np.ascontiguousarray(np.rot90(image, turns))
    if box is None:
        return rotated, None
    x0, y0, x1, y1 = parse_box(box)
    height, width = image.shape[:2]
    for _ in range(turns):  # a quarter turn of a width x height frame: (x, y) -> (y, width - x)
        x0, y0, x1, y1 = y0, width - x1, y1, width - x0
        width, height = height, width
    return rotated, (x0, y0, x1, y1)


@dataclasses.dataclass(frozen=True)
class QueryViews:
    """A query's extracted features at several rotations (``SearchableIndex.query_views``), one
    per angle; ``search`` takes them as a query, with the same ``query_rotations``.

    Attributes:
        rotations: angles in degrees, counter-clockwise.
        features: what ``query_features`` returns for the query turned by each angle.
    """

    rotations: tuple[int, ...]
    features: tuple


def decode_query(query, color: bool) -> np.ndarray:
    """A query image at full size: a file path (decoded, EXIF applied) or an (h, w[, 3]) uint8
    RGB array, as (h, w, 3) RGB when ``color`` else (h, w) grayscale."""
    if not isinstance(query, np.ndarray):
        return load_image(os.fspath(query), ImageOptions(max_side=0), color)
    image = np.asarray(query, np.uint8)
    if image.ndim == 3 and not color:
        import cv2
        return cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2GRAY)
    if image.ndim == 2 and color:
        return np.repeat(image[..., None], 3, axis=2)
    return image


def name_map(paths: Sequence[str], names: Sequence[str] | None = None) -> dict[str, str]:
    """path -> name of each image to index (default: the path itself)."""
    names = list(names) if names is not None else [str(p) for p in paths]
    if len(names) != len(paths):
        raise ValueError("one name per path is needed")
    return dict(zip(map(str, paths), names))


class SearchableIndex:
    """A collection of images searchable by example.

    Args:
        pipeline: the method (a name or a ``Pipeline``); its build must suit the subclass.
        cache_dir: feature cache folder used when reading images (None: no cache).
    """

    #: Saved format name of the subclass.
    FORMAT = ""
    #: Build kind of the subclass's pipelines (``local`` or ``global``).
    KIND = ""
    #: Type of the subclass's prepared queries (``search`` accepts them as they are).
    QUERY_TYPE: type = object

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        INDEX_CLASSES[cls.FORMAT] = cls

    def __init__(self, pipeline: Pipeline | str, cache_dir: str | None = None):
        self.pipeline = get_pipeline(pipeline)
        if self.pipeline.kind != self.KIND:
            raise ValueError(f"pipeline {self.pipeline.name!r} builds a {self.pipeline.kind} index, "
                             f"not a {type(self).__name__}; use cbir.build.empty_index")
        self.cache_dir = cache_dir
        self.names = ImageNames()
        #: Folder that image names are relative to (None: names are the paths as given).
        self.root: str | None = None
        self._lock = ReadWriteLock()

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: str) -> bool:
        return name in self.names

    # ---- what a subclass supplies -------------------------------------------------------------

    def _feature_source(self) -> tuple[Callable[[str], object], FeatureCache | None, str]:
        """(path -> features of an image file, feature cache used around it or None,
        ``bovw.extraction.iter_features`` backend that runs it)."""
        raise NotImplementedError

    def _add_batch(self, names: list[str], items: list, n_jobs: int) -> None:
        """Add images by their extracted features; called without the lock held."""
        raise NotImplementedError

    def _item_bytes(self, item) -> int:
        """Bytes held by one extracted image's features (bounds the batches of a build)."""
        raise NotImplementedError

    def _remove_slots(self, slots: list[int]) -> None:
        """Remove images from the stores (the write lock is held)."""
        raise NotImplementedError

    def _consolidate(self) -> None:
        """Join pending additions in the stores (the write lock is held)."""
        raise NotImplementedError

    def _pending(self) -> bool:
        """Whether the stores hold pending additions."""
        raise NotImplementedError

    def prepare_query(self, query, box=None, options: SearchOptions | str | None = None):
        """The query as ranking needs it (features extracted, described, quantized once).

        Args:
            query: image path or (h, w[, 3]) uint8 RGB array (subclasses accept more).
            box: optional (x0, y0, x1, y1) region in pixels of the image as given.
            options: search options the query is prepared for (default: the pipeline's).
        """
        raise NotImplementedError

    def query_features(self, query, box=None):
        """The query's extracted features, before any search option applies; ``search`` takes
        them as a query (evaluation times searches from here)."""
        return self.prepare_query(query, box)

    def query_views(self, query, box=None, rotations: Sequence[int] = (0,)) -> QueryViews:
        """The query's extracted features (``query_features``) with the image turned by each angle
        of ``rotations`` (degrees, counter-clockwise; ``box``, in pixels of the image as given,
        turns with it). Angle 0 is ``query_features(query, box)`` itself.

        Raises:
            ValueError: an angle not in ``QUERY_ROTATIONS``, or a turned query given as features.
        """
        rotations = SearchOptions(query_rotations=tuple(rotations)).query_rotations
        image, views = None, []
        for degrees in rotations:
            if degrees == 0:
                views.append(self.query_features(query, box))
                continue
            if image is None:
                if not isinstance(query, (str, os.PathLike, np.ndarray)):
                    raise ValueError("a query's features have one orientation: give its image (a path or an "
                                     "array) to search it at several rotations")
                # without a box, turn the image down-scaled as extracted (not the full-size one); a box is
                # in pixels of the image as given
                image = decode_query(query, color=True) if box is not None else self.query_image(query, color=True)
            views.append(self.query_features(*rotate_query(image, box, degrees)))
        return QueryViews(rotations, tuple(views))

    def _is_empty_query(self, prepared) -> bool:
        raise NotImplementedError

    def _rank(self, prepared, options: SearchOptions, top_k: int | None, n_jobs: int) -> list[RankedImage]:
        """Ranked slots (the read lock is held)."""
        raise NotImplementedError

    def _parts(self) -> dict:
        """Saved parts: prefix -> object with ``state_dict()`` (or None)."""
        raise NotImplementedError

    @classmethod
    def _from_parts(cls, pipeline: Pipeline, meta: dict, arrays: dict, cache_dir: str | None) -> "SearchableIndex":
        """Rebuild an index from its saved parts (``meta[prefix]``, ``part_arrays(arrays, prefix)``)."""
        raise NotImplementedError

    def _info(self) -> dict:
        """Subclass-specific facts for ``info()``."""
        return {}

    def owner(self, slot: int) -> tuple["SearchableIndex", int]:
        """(the index holding image ``slot``, the image's slot there): this index itself; a sharded
        index names the shard."""
        return self, slot

    def empty_like(self) -> "SearchableIndex":
        """An empty index with this one's pipeline, learned parts (shared, not copied), cache and root."""
        raise NotImplementedError

    def _join_stores(self, indexes: Sequence["SearchableIndex"]) -> None:
        """Set this empty index's stores to those of ``indexes`` joined in order (see ``concatenate``)."""
        raise NotImplementedError

    @classmethod
    def concatenate(cls, indexes: Sequence["SearchableIndex"]) -> "SearchableIndex":
        """One index holding the images of ``indexes`` in order: exactly the index that adding their
        images in that order to one index builds (how a distributed build merges its partitions and
        ``cbir.sharded_index`` splits a collection).

        Raises:
            ValueError: an index is built otherwise than the first (naming its position), or a name
                is in two of them.
        """
        first = indexes[0]
        for position, other in enumerate(indexes[1:], 1):
            if not first.built_like(other):
                raise ValueError(f"index {position} has another pipeline, root or learned parts than index 0")
        merged = first.empty_like()
        for index in indexes:
            index.consolidate()
        merged.names = ImageNames([name for index in indexes for name in index.names])
        merged._join_stores(indexes)
        return merged

    def _learned_parts(self) -> dict:
        """Name -> learned part (vocabulary, whitening...; None when absent): what indexes whose images
        are scored and merged together must share."""
        raise NotImplementedError

    def built_like(self, other: "SearchableIndex") -> bool:
        """Whether ``other`` has this index's class, pipeline, root and learned parts (equal arrays), so
        that their images can be scored and merged together."""
        if type(self) is not type(other) or self.pipeline != other.pipeline or self.root != other.root:
            return False
        for name, mine in self._learned_parts().items():
            theirs = other._learned_parts()[name]
            if (mine is None) != (theirs is None):
                return False
            if mine is not None and mine is not theirs:
                (meta, arrays), (other_meta, other_arrays) = mine.state_dict(), theirs.state_dict()
                if meta != other_meta or arrays.keys() != other_arrays.keys() \
                        or not all(np.array_equal(arrays[key], other_arrays[key]) for key in arrays):
                    return False
        return True

    # ---- search options -----------------------------------------------------------------------

    def search_options(self, options: SearchOptions | Pipeline | str | None = None) -> SearchOptions:
        """The options a search runs with.

        Args:
            options: ``SearchOptions``; a pipeline (or its name) built like this index, whose
                defaults are taken (``sift-sv`` on a ``sift-bow`` index); None: this index's defaults.

        Raises:
            ValueError: the pipeline is built differently, or an option cannot apply to this index.
        """
        if options is None:
            return self.pipeline.search
        if isinstance(options, (str, Pipeline)):
            other = get_pipeline(options)
            if not self.serves(other):
                raise ValueError(f"pipeline {other.name!r} is built differently from this index "
                                 f"({self.pipeline.name!r}); build an index for it")
            options = other.search
        check_search_options(self.pipeline.build, options)
        return options

    def serves(self, pipeline: Pipeline | str) -> bool:
        """Whether ``pipeline`` is built like this index (so its search options apply here)."""
        pipeline = get_pipeline(pipeline)
        return pipeline.kind == self.KIND and self._comparable_build(pipeline.build) == self.pipeline.build

    def _comparable_build(self, build):
        """``build`` with the shapes of the learned parts (vocabulary, whitening) set as here."""
        return build

    # ---- building -----------------------------------------------------------------------------

    def add_images(self, paths: Sequence[str], names: Sequence[str] | None = None, n_jobs: int = 1,
                   progress: bool | None = None) -> ExtractionReport:
        """Extract and index image files; unusable files are skipped and reported.

        Args:
            paths: image files.
            names: how each image is called in results (default: its path relative to ``root``
                when the index has one, else the path as given).
            n_jobs: extraction workers (processes for SIFT, threads for CNN features) and
                quantization threads.
            progress: show a progress bar (None: only on a terminal).

        Returns:
            what was extracted, taken from the cache, and skipped (with reasons).
        """
        paths = [str(p) for p in paths]
        name_of = name_map(paths, names if names is not None or self.root is None else
                           [self.name_for(p) for p in paths])
        report = ExtractionReport()
        extract, cache, backend = self._feature_source()
        batch_names, batch_items, batch_bytes, seen = [], [], 0, set()
        for path, item in iter_features(paths, extract, cache, report, n_jobs=n_jobs, verbose=progress,
                                        backend=backend):
            name = name_of[path]
            if name in self.names or name in seen:
                report.skipped.append((path, f"an image named {name!r} is already indexed"))
                continue
            seen.add(name)
            batch_names.append(name)
            batch_items.append(item)
            batch_bytes += self._item_bytes(item)
            if len(batch_names) >= ADD_BATCH or batch_bytes >= ADD_BATCH_BYTES:
                self._add_batch(batch_names, batch_items, n_jobs)
                batch_names, batch_items, batch_bytes = [], [], 0
        if batch_names:
            self._add_batch(batch_names, batch_items, n_jobs)
        return report

    def name_for(self, path: str) -> str:
        """The name an image file gets: its real path relative to ``root`` (absolute when outside it),
        so one file reached by a relative and an absolute path is indexed once."""
        real = os.path.realpath(path)
        if self.root is None:
            return real
        relative = os.path.relpath(real, self.root)
        return real if relative.startswith(os.pardir) else relative

    def path_of(self, name: str) -> str:
        """The file an indexed image name refers to (absolute when the index has a root)."""
        return os.path.join(self.root, name) if self.root is not None and not os.path.isabs(name) else name

    def remove(self, names: Iterable[str]) -> None:
        """Remove images by name (KeyError naming the first unknown one); idf and norms stay exact."""
        slots = self.names.slots(names)
        with self._lock.writing():
            self._consolidate()
            self._remove_slots(slots)
            self.names.remove(slots)

    def consolidate(self) -> None:
        """Join pending additions now (searches and saves do it when needed)."""
        with self._lock.writing():
            self._consolidate()

    @contextlib.contextmanager
    def _reading(self):
        """Hold the read lock over stores with nothing pending (joined first, under the write lock)."""
        while True:
            with self._lock.reading():
                if not self._pending():  # writers are excluded until the block ends
                    yield
                    return
            self.consolidate()

    # ---- searching ----------------------------------------------------------------------------

    def query_image(self, query, box=None, max_side: int | None = None, color: bool = False) -> np.ndarray:
        """A query image as extracted: decoded at full size, cropped to ``box``, then
        down-scaled to ``max_side`` (default: the pipeline's)."""
        image = decode_query(query, color)
        if box is not None:
            image = crop(image, box)
        return resize_to_max_side(image, self.pipeline.build.image_options.max_side if max_side is None else max_side)

    def search(self, query, top_k: int | None = None, box=None, options: SearchOptions | str | None = None,
               n_jobs: int = 1) -> list[SearchResult]:
        """Rank the collection by similarity to ``query``.

        Args:
            query: image path, (h, w[, 3]) uint8 RGB array, a prepared query (``prepare_query``), or
                the query's views (``query_views``, for options with ``query_rotations``).
            top_k: return only the best ``top_k`` (default: the whole collection).
            box: optional (x0, y0, x1, y1) query region in pixels of the image as given.
            options: search options, or a pipeline name built like this index (default: the pipeline's).
            n_jobs: threads for re-ranking.

        Returns:
            results, best first (verified ones carry inliers and homography); empty,
            with a warning logged, when the query has no features or the index is empty.

        Raises:
            bovw.images.ImageReadError: the query file cannot be used.
            ValueError: a bad box, top_k or option.
        """
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be at least 1 (got {top_k})")
        options = self.search_options(options)
        if isinstance(query, QueryViews) or options.query_rotations != (0,):
            if isinstance(query, self.QUERY_TYPE):
                raise ValueError("a prepared query has one orientation: give its image (a path or an array) to "
                                 "search it at several rotations")
            if isinstance(query, QueryViews) and box is not None:
                raise ValueError("give the box to query_views: the views are already extracted")
            views = query if isinstance(query, QueryViews) else self.query_views(query, box, options.query_rotations)
            if views.rotations != options.query_rotations:
                raise ValueError(f"the query's views are turned by {views.rotations}, the search options ask for "
                                 f"{options.query_rotations}")
            prepared = [view if isinstance(view, self.QUERY_TYPE) else self.prepare_query(view, None, options)
                        for view in views.features]
        else:
            prepared = [query if isinstance(query, self.QUERY_TYPE) else self.prepare_query(query, box, options)]
        if len(self) == 0:
            logger.warning("the index is empty; no results")
            return []
        prepared = [view for view in prepared if not self._is_empty_query(view)]
        if not prepared:
            logger.warning("%s has no features; no results",
                           f"query {os.fspath(query)}" if isinstance(query, (str, os.PathLike)) else "the query")
            return []
        with self._reading():
            rankings = [self._rank(view, options, top_k, n_jobs) for view in prepared]
            ranked = rankings[0] if len(rankings) == 1 else best_per_image(rankings, top_k)
            return [SearchResult(self.names[e.slot], e.score, e.slot, e.inliers, e.homography, e.matches)
                    for e in ranked]

    # ---- persistence --------------------------------------------------------------------------

    def save(self, directory: str) -> None:
        """Atomically save the whole index as a directory (no pickle)."""
        meta, arrays = self.state_dict()
        save_arrays(directory, self.FORMAT, FORMAT_VERSION, meta, arrays)

    def state_dict(self) -> tuple[dict, dict]:
        """(metadata, arrays) of the whole index, as ``save`` writes them (see ``from_state_dict``)."""
        with self._reading():
            meta, arrays = {"pipeline": self.pipeline.to_dict(), "collection_root": self.root}, {}
            for prefix, part in {"names": self.names, **self._parts()}.items():
                meta[prefix] = None
                if part is not None:
                    meta[prefix], part_arrays = part.state_dict()
                    arrays.update({f"{prefix}.{name}": value for name, value in part_arrays.items()})
        return meta, arrays

    @classmethod
    def from_state_dict(cls, meta: dict, arrays: dict, cache_dir: str | None = None) -> "SearchableIndex":
        """Rebuild an index of this class from ``state_dict()`` output (ValueError, KeyError or
        TypeError when inconsistent)."""
        index = cls._from_parts(Pipeline.from_dict(meta["pipeline"]), meta, arrays, cache_dir)
        index.names = ImageNames.from_state_dict(meta["names"], part_arrays(arrays, "names"))
        index.root = meta.get("collection_root")
        return index

    @classmethod
    def load(cls, directory: str, cache_dir: str | None = None, verify: bool = True,
             mmap: bool = False) -> "SearchableIndex":
        """Load a saved index (of this class, or of any class when called on ``SearchableIndex``).

        Args:
            directory: the saved index.
            cache_dir: feature cache for later additions and queries.
            verify: check every file's checksum (reads every byte).
            mmap: memory-map the arrays instead of reading them (a large index opens in
                well under a second; pair with ``verify=False``). Shapes, dtypes and
                posting bounds are checked either way.

        Raises:
            IndexFormatError: naming the problem (other format or version, missing,
                corrupted or inconsistent files).
        """
        manifest = read_manifest(directory)
        fmt, version = manifest.get("format"), manifest.get("version")
        target = INDEX_CLASSES.get(fmt) if cls is SearchableIndex else cls
        if target is None or (cls is not SearchableIndex and fmt != cls.FORMAT):
            expected = ", ".join(INDEX_CLASSES) if cls is SearchableIndex else cls.FORMAT
            raise IndexFormatError(f"{directory}: format {fmt!r}, expected {expected!r}")
        if target.load.__func__ is not SearchableIndex.load.__func__:  # saved otherwise (a sharded index)
            return target.load(directory, cache_dir=cache_dir, verify=verify, mmap=mmap)
        if version not in READABLE_VERSIONS:
            raise IndexFormatError(f"{directory}: format version {version!r} cannot be read by this engine "
                                   f"(it reads versions {', '.join(map(str, READABLE_VERSIONS))})")
        meta, arrays = load_arrays(directory, fmt, version, verify=verify, mmap=mmap)
        try:
            if version == 1:
                meta, arrays = _upgrade_format1(fmt, meta, arrays)
            index = target.from_state_dict(meta, arrays, cache_dir)
        except (ValueError, KeyError, TypeError) as exc:
            raise IndexFormatError(f"{directory}: invalid index ({exc.__class__.__name__}: {exc})") from exc
        index._check_sizes(directory)
        return index

    def _check_sizes(self, directory: str) -> None:
        """IndexFormatError when the loaded stores disagree with the names on the image count."""
        raise NotImplementedError

    # ---- facts --------------------------------------------------------------------------------

    def info(self) -> dict:
        """What a user needs to know about the index (JSON-serialisable)."""
        with self._reading():
            facts = {"format": self.FORMAT, "format_version": FORMAT_VERSION, "pipeline": self.pipeline.name,
                     "kind": self.KIND, "images": len(self), "collection_root": self.root, "build": dataclasses.asdict(self.pipeline.build),
                     "search_defaults": self.pipeline.search.to_dict(),
                     "pipelines_served": [p for p in _pipeline_names() if self.serves(p)]}
            facts.update(self._info())
            sizes = {}
            for prefix, part in {"names": self.names, **self._parts()}.items():
                if part is not None:
                    sizes.update({f"{prefix}.{name}": int(np.asarray(value).nbytes)
                                  for name, value in part.state_dict()[1].items()})
        facts["bytes"] = sizes
        facts["bytes_per_image"] = {name: size / max(len(self), 1) for name, size in sizes.items()}
        return facts


def _pipeline_names() -> list[str]:
    from cbir.pipelines import PIPELINES
    return list(PIPELINES)


def part_arrays(arrays: dict, prefix: str) -> dict:
    """The arrays saved under ``prefix.``, without the prefix."""
    return {name[len(prefix) + 1:]: value for name, value in arrays.items() if name.startswith(prefix + ".")}


def _upgrade_format1(fmt: str, meta: dict, arrays: dict) -> tuple[dict, dict]:
    """Format-1 meta and arrays in the format-2 layout: the pipeline split into build and
    search settings, names moved from the image store into their own registry."""
    meta = dict(meta, pipeline=pipeline_from_format1(meta["pipeline"], fmt).to_dict())
    images = part_arrays(arrays, "images")
    n = int(meta["images"]["n_images"])
    meta["names"] = {"kind": "image-names", "version": 1, "n_images": n}
    arrays = {**arrays, "names.bytes": images["name_bytes"], "names.offsets": images["name_offsets"]}
    if fmt == "cbir-global-index":
        del meta["images"]
    return meta, arrays


def load_index(directory: str, cache_dir: str | None = None, verify: bool = True,
               mmap: bool = False) -> SearchableIndex:
    """Load a saved index of any kind, by its manifest (see ``SearchableIndex.load``)."""
    import cbir.fusion_index  # noqa: F401  (registers the index classes)
    import cbir.sharded_index  # noqa: F401
    return SearchableIndex.load(directory, cache_dir=cache_dir, verify=verify, mmap=mmap)

