"""The comparison report of two methods on a benchmark, from a small real run."""
import os
import re

import numpy as np
from PIL import Image

from cbir.comparison import run_method, write_report


def test_report_compares_two_methods_query_by_query(built_index, ukbench_subset, tmp_path):
    bow = run_method("sift:sift-bow", built_index, ukbench_subset, "sift-bow", progress=False)
    verified = run_method("sift:sift-sv", built_index, ukbench_subset, "sift-sv", progress=False)
    assert np.mean(bow.per_query) == bow.result.scores["N-S"]
    assert 0 < bow.bytes_per_image < sum(built_index.info()["bytes_per_image"].values())  # vocabulary excluded
    path = write_report(str(tmp_path / "report"), ukbench_subset, bow, verified,
                        lambda name: os.path.join(ukbench_subset.root, name), listed=3, top=4)
    text = open(path, encoding="utf-8").read()
    rows = {m.group(1): m.groups()[1:] for m in re.finditer(r"^\| (sift:[\w-]+) \| ([\d.]+) \| (\d+) \|", text, re.M)}
    assert float(rows["sift:sift-sv"][0]) == round(verified.result.scores["N-S"], 4)
    won = int(np.sum(verified.per_query > bow.per_query))
    assert int(rows["sift:sift-sv"][1]) == won > 0
    assert int(rows["sift:sift-bow"][1]) == int(np.sum(bow.per_query > verified.per_query))
    assert Image.open(tmp_path / "report" / "scatter.png").size == (500, 500)
    strips = sorted(f for f in os.listdir(tmp_path / "report") if f.startswith("wins-b-"))
    assert len(strips) == min(3, won) and all(f"]({f})" in text for f in strips)
    # two rows (sift-bow, sift-sv) of 168 px: the query framed blue, then the top 4 framed by relevance
    picture = np.asarray(Image.open(tmp_path / "report" / strips[0])).astype(int)
    assert picture.shape[0] == 2 * 168
    best = re.search(r"^1\. `(ukbench\d+\.jpg)`", text.split("## Where sift:sift-sv wins most")[1], re.M).group(1)
    query = [q.name for q in ukbench_subset.queries].index(best)
    positives, _ = ukbench_subset.relevant(query)
    tile = round(320 * 140 / 240) + 2 * 5 + 4  # UKBench images are 320x240
    second_row = 168 + 70
    assert np.abs(picture[second_row, 2] - (21, 101, 192)).max() < 40  # the query's frame
    top = ukbench_subset.cleaned(verified.result.rankings)[query][0]
    expected = (46, 125, 50) if top in positives else (198, 40, 40)
    assert np.abs(picture[second_row, tile + 2] - expected).max() < 40


def test_cbir_compare_writes_the_report_from_saved_indexes(built_index, ukbench_subset, tmp_path, capsys):
    from cbir.cli import main
    built_index.save(str(tmp_path / "sift"))
    subset_root = tmp_path / "images"
    subset_root.mkdir()
    for name in ukbench_subset.database[:8]:
        os.symlink(os.path.join(ukbench_subset.root, name), subset_root / name)
    runs = ["--run", f"{tmp_path / 'sift'}:sift-sv", "--run", str(tmp_path / "sift")]
    assert main(["compare", "--dataset", "ukbench", "--root", str(subset_root), *runs, "-o", str(tmp_path / "r"),
                 "--listed", "2"]) == 0
    report = open(capsys.readouterr().out.strip(), encoding="utf-8").read()
    assert "# sift:sift-sv against sift:sift-bow on ukbench (8 queries)" in report
    assert main(["compare", "--dataset", "ukbench", "--root", str(subset_root), "--run", str(tmp_path / "sift"),
                 "-o", str(tmp_path / "r")]) == 1
    assert "compare takes two --run" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    os.symlink(os.path.join(ukbench_subset.root, "ukbench00100.jpg"), other / "ukbench00100.jpg")
    assert main(["compare", "--dataset", "ukbench", "--root", str(other), *runs, "-o", str(tmp_path / "r")]) == 1
    assert "lacks 1 of the ukbench images (e.g. ukbench00100.jpg)" in capsys.readouterr().err
