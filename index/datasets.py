"""Benchmark datasets: database images, queries and their ground truth.

Each dataset scores rankings given as, per query, database image *names* (the
file name relative to the dataset root), best first.
"""
from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass, field, replace

from index.evaluation import average_precision, mean_average_precision, ranks_without_junk, ukbench_ns_score


@dataclass
class Query:
    """A query image.

    Attributes:
        name: file name relative to the dataset root (used in ranking files).
        path: image file.
        bbox: (x0, y0, x1, y1) region of interest in pixels of the original
            image, or None for the whole image.
        remove_self: drop the query's own image from its ranking before scoring.
    """

    name: str
    path: str
    bbox: tuple | None = None
    remove_self: bool = False


@dataclass
class Dataset:
    """Database images, queries and ground truth of one benchmark."""

    name: str
    root: str
    database: list = field(default_factory=list)
    queries: list = field(default_factory=list)
    metric: str = "mAP"
    _positives: list = field(default_factory=list)
    _junk: list = field(default_factory=list)
    _revisitop: dict = field(default_factory=dict)

    @property
    def database_paths(self) -> list[str]:
        return [os.path.join(self.root, name) for name in self.database]

    def cleaned(self, rankings: list[list[str]]) -> list[list[str]]:
        """The rankings as scored: a query's own image dropped where the benchmark says so."""
        return [[n for n in r if n != q.name] if q.remove_self else list(r)
                for q, r in zip(self.queries, rankings)]

    def score(self, rankings: list[list[str]]) -> dict[str, float]:
        """Score one ranking per query (in ``queries`` order): metric name -> value."""
        if len(rankings) != len(self.queries):
            raise ValueError(f"{len(rankings)} rankings for {len(self.queries)} queries")
        rankings = self.cleaned(rankings)
        if self.metric == "N-S":
            return {"N-S": ukbench_ns_score(rankings, self._positives)}
        if self._revisitop:
            return {protocol: mean_average_precision(rankings, positives, junk)
                    for protocol, (positives, junk) in self._revisitop.items()}
        return {"mAP": mean_average_precision(rankings, self._positives, self._junk or None)}


    def per_query(self, rankings: list[list[str]]) -> list[float]:
        """Each query's score, in ``queries`` order: its AP (revisitop: Medium protocol; nan when it
        has no positive), or for N-S its count of group images among the top 4 (0-4)."""
        if len(rankings) != len(self.queries):
            raise ValueError(f"{len(rankings)} rankings for {len(self.queries)} queries")
        rankings = self.cleaned(rankings)
        if self.metric == "N-S":
            return [float(len(set(r[:4]) & g)) for r, g in zip(rankings, self._positives)]
        relevant = [self.relevant(i) for i in range(len(rankings))]
        return [average_precision(ranks_without_junk(r, p, j), len(p)) for r, (p, j) in zip(rankings, relevant)]

    def relevant(self, query: int) -> tuple[set, set]:
        """(positives, junk) names of the ``query``-th query (revisitop: Medium protocol)."""
        positives, junk = self._revisitop["M"] if self._revisitop else (self._positives, self._junk)
        return positives[query], junk[query] if junk else set()

    def restricted_to(self, names) -> "Dataset":
        """The benchmark over the database images in ``names`` only (an index of part of it):
        positives and junk outside them dropped, and the queries left without a positive."""
        kept = set(names)
        database = [n for n in self.database if n in kept]
        positive_sets = self._revisitop["M"][0] if self._revisitop else self._positives
        keep = [i for i, p in enumerate(positive_sets) if p & kept]

        def restrict(sets):
            return [sets[i] & kept for i in keep] if sets else []
        return replace(self, database=database, queries=[self.queries[i] for i in keep],
                       _positives=restrict(self._positives), _junk=restrict(self._junk),
                       _revisitop={k: (restrict(p), restrict(j)) for k, (p, j) in self._revisitop.items()})


_IMAGE = re.compile(r"\.(jpe?g|png|webp|bmp|tiff?)$", re.IGNORECASE)


def _image_names(root: str) -> list[str]:
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root}: dataset folder not found")
    return sorted(f for f in os.listdir(root) if _IMAGE.search(f))


def holidays(root: str) -> Dataset:
    """INRIA Holidays: group = id // 100, the image whose id ends in 00 is the query,
    the others of its group are the positives; every image is in the database and
    the query is removed from its own ranking."""
    names = [n for n in _image_names(root) if re.match(r"^\d+\.", n)]
    groups: dict[int, list[str]] = {}
    for name in names:
        groups.setdefault(int(os.path.splitext(name)[0]) // 100, []).append(name)
    dataset = Dataset("holidays", root, database=names, metric="mAP")
    for members in groups.values():
        query = [n for n in members if int(os.path.splitext(n)[0]) % 100 == 0]
        if len(query) != 1:
            continue
        dataset.queries.append(Query(query[0], os.path.join(root, query[0]), remove_self=True))
        dataset._positives.append(set(members) - set(query))
    return dataset


def ukbench(root: str) -> Dataset:
    """UKBench: images 4k..4k+3 show one object; every image queries all of them;
    N-S counts the group's images among the top 4, the query included."""
    pattern = re.compile(r"^ukbench(\d+)\.", re.IGNORECASE)
    names = [n for n in _image_names(root) if pattern.match(n)]
    number = {n: int(pattern.match(n).group(1)) for n in names}
    groups: dict[int, set] = {}
    for name in names:
        groups.setdefault(number[name] // 4, set()).add(name)
    dataset = Dataset("ukbench", root, database=names, metric="N-S")
    for name in names:
        dataset.queries.append(Query(name, os.path.join(root, name)))
        dataset._positives.append(groups[number[name] // 4])
    return dataset


def revisitop(root: str, name: str) -> Dataset:
    """Revisited Oxford/Paris (revisitop layout: ``root/gnd_<name>.pkl``, ``root/jpg/``).

    Queries are cropped to their bounding box. Easy: easy positives, hard ones
    junk; Medium: easy + hard; Hard: hard positives, easy ones junk.

    The ground-truth file is a pickle published by the dataset authors; it is
    only ever read from the dataset folder the user names, never from an index.
    """
    gnd_file = os.path.join(root, f"gnd_{name}.pkl")
    if not os.path.isfile(gnd_file):
        raise FileNotFoundError(f"{gnd_file}: revisitop ground truth not found")
    with open(gnd_file, "rb") as handle:
        cfg = pickle.load(handle)  # trusted dataset file, see docstring
    database = [f"jpg/{n}.jpg" for n in cfg["imlist"]]
    dataset = Dataset(name, root, database=database, metric="mAP")
    protocols = {"E": ([], []), "M": ([], []), "H": ([], [])}
    for qname, gnd in zip(cfg["qimlist"], cfg["gnd"]):
        dataset.queries.append(Query(f"jpg/{qname}.jpg", os.path.join(root, "jpg", f"{qname}.jpg"),
                                     bbox=tuple(float(v) for v in gnd["bbx"])))
        easy = {database[i] for i in gnd["easy"]}
        hard = {database[i] for i in gnd["hard"]}
        junk = {database[i] for i in gnd["junk"]}
        protocols["E"][0].append(easy), protocols["E"][1].append(junk | hard)
        protocols["M"][0].append(easy | hard), protocols["M"][1].append(junk)
        protocols["H"][0].append(hard), protocols["H"][1].append(junk | easy)
    dataset._revisitop = protocols
    return dataset


def load_dataset(kind: str, root: str) -> Dataset:
    """``holidays``, ``ukbench``, or ``revisitop`` (the gnd file in ``root`` names it)."""
    if kind == "holidays":
        return holidays(root)
    if kind == "ukbench":
        return ukbench(root)
    if kind == "revisitop":
        found = [f[4:-4] for f in os.listdir(root) if f.startswith("gnd_") and f.endswith(".pkl")]
        if len(found) != 1:
            raise FileNotFoundError(f"{root}: expected one gnd_<name>.pkl, found {found}")
        return revisitop(root, found[0])
    raise ValueError(f"unknown dataset {kind!r} (holidays, ukbench, revisitop)")
