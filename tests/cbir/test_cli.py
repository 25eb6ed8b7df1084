import json
import os
import shutil

import pytest
from PIL import Image

from cbir.cli import main


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory, data_dir):
    folder = tmp_path_factory.mktemp("images")
    for i in range(16):
        shutil.copy(os.path.join(data_dir, "ukbench", f"ukbench{i:05d}.jpg"), folder)
    (folder / "broken.jpg").write_text("not an image")
    return folder


def test_vocab_index_query_eval(image_folder, tmp_path, capsys):
    cache = str(tmp_path / "cache")
    vocab, index = str(tmp_path / "vocab"), str(tmp_path / "index")
    assert main(["vocab", str(image_folder), "-o", vocab, "--branching", "32", "--depth", "2",
                 "--cache", cache]) == 0
    assert main(["index", str(image_folder), "-o", index, "--vocab", vocab, "--cache", cache]) == 0
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "skipped" in err
    assert main(["query", str(image_folder / "ukbench00005.jpg"), str(image_folder / "ukbench00010.jpg"),
                 "--index", index, "--format", "jsonl", "--top-k", "3", "--cache", cache]) == 0
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["query"][-9:], r["rank"]) for r in results] == [("00005.jpg", 1), ("00005.jpg", 2), ("00005.jpg", 3),
                                                             ("00010.jpg", 1), ("00010.jpg", 2), ("00010.jpg", 3)]
    assert results[0]["name"] == "ukbench00005.jpg" and results[3]["name"] == "ukbench00010.jpg"
    assert results[0]["path"] == os.path.realpath(image_folder / "ukbench00005.jpg")
    assert main(["info", index, "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["images"] == 16 and facts["vocabulary_words"] == 32 ** 2 and facts["pipeline"] == "sift-bow"
    assert main(["index", str(image_folder), "-o", index, "--add", "--method", "sift-he", "--cache", cache]) == 1
    assert "built with sift-bow; --add keeps its method" in capsys.readouterr().err

    rankings = str(tmp_path / "rankings.jsonl")
    assert main(["eval", "--dataset", "ukbench", "--root", str(image_folder), "--vocab", vocab,
                 "--rankings", rankings, "--cache", cache]) == 0
    assert "N-S" in capsys.readouterr().out
    lines = [json.loads(line) for line in open(rankings)]
    assert len(lines) == 16 and len(lines[0]["ranking"]) == 16 and lines[0]["query"] == "ukbench00000.jpg"


def test_refuses_to_overwrite_without_force(image_folder, tmp_path, capsys):
    vocab = str(tmp_path / "vocab")
    args = ["vocab", str(image_folder / "ukbench00000.jpg"), "-o", vocab, "--branching", "4", "--depth", "1",
            "--cache", ""]
    assert main(args) == 0
    assert main(args) == 1
    assert "use --force to overwrite it" in capsys.readouterr().err
    assert main(args + ["--force"]) == 0


def test_errors_name_the_file(tmp_path, capsys):
    assert main(["query", "x.jpg", "--index", str(tmp_path)]) == 1
    assert str(tmp_path) in capsys.readouterr().err


def test_user_mistakes_end_in_one_line_and_an_exit_code(image_folder, tmp_path, capsys):
    index = os.path.join(os.path.dirname(__file__), "..", "data", "format-v1", "sift-bow")
    query = str(image_folder / "ukbench00005.jpg")
    for extra, code, message in ((["--box", "1,2,3"], 1, "a box is four numbers"),
                                 (["--box", "300,10,20,40"], 1, "is empty"),
                                 (["--top-k", "0"], 2, "--top-k must be at least 1"),
                                 (["--window-search", "10"], 1, "window search needs every conv-map position of one grid"),
                                 (["--asmk-alpha", "1"], 1, "need an ASMK* index"),
                                 (["--rotations", "0,45"], 1, "query rotations are distinct angles of 0, 90"),
                                 (["--rotations", "0,ninety"], 1, "angles are whole degrees separated by commas"),
                                 (["--rotations", "0,90", "--verify", "10"], 1,
                                  "query rotations do not combine with spatial verification"),
                                 (["--rotations", "0,90", "--draw", str(tmp_path / "q.png")], 1,
                                  "--draw shows the query as given"),
                                 (["--search", "sift-he"], 1, "'sift-he' is built differently")):
        assert main(["query", query, "--index", index, "--cache", ""] + extra) == code
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_asmk_selectivity_is_a_search_option(image_folder, tmp_path, capsys):
    """--asmk-alpha 1 keeps the ranking's head (the query's own image first) and raises every image's
    score (u >= u^3 for the similarities u in [0, 1] that pass the threshold); a bad value is refused."""
    cache = str(tmp_path / "cache")
    vocab, index = str(tmp_path / "vocab"), str(tmp_path / "index")
    assert main(["vocab", str(image_folder), "-o", vocab, "--method", "sift-asmk", "--branching", "16",
                 "--depth", "2", "--cache", cache]) == 0
    assert main(["index", str(image_folder), "-o", index, "--vocab", vocab, "--method", "sift-asmk",
                 "--train-root", str(image_folder), "--cache", cache]) == 0
    capsys.readouterr()
    scores = {}
    for alpha in ([], ["--asmk-alpha", "1"]):
        assert main(["query", str(image_folder / "ukbench00005.jpg"), "--index", index, "--format", "jsonl",
                     "--top-k", "16", "--cache", cache] + alpha) == 0
        results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert results[0]["name"] == "ukbench00005.jpg"
        scores[bool(alpha)] = {r["name"]: r["score"] for r in results}
    assert scores[False].keys() == scores[True].keys()
    assert all(scores[True][name] >= scores[False][name] - 1e-6 for name in scores[False])
    assert sum(scores[True][name] > scores[False][name] + 1e-4 for name in scores[False]) >= 8
    assert main(["query", str(image_folder / "ukbench00005.jpg"), "--index", index, "--asmk-threshold", "2",
                 "--cache", cache]) == 1
    err = capsys.readouterr().err
    assert "ASMK needs alpha > 0, a threshold in [-1, 1]" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_query_draws_matches(image_folder, tmp_path, capsys):
    cache = str(tmp_path / "cache")
    vocab, index = str(tmp_path / "vocab"), str(tmp_path / "index")
    assert main(["vocab", str(image_folder), "-o", vocab, "--branching", "10", "--depth", "2", "--cache", cache]) == 0
    assert main(["index", str(image_folder), "-o", index, "--vocab", vocab, "--method", "sift-sv",
                 "--cache", cache]) == 0
    picture = tmp_path / "matches.png"
    assert main(["query", str(image_folder / "ukbench00001.jpg"), "--index", index, "--top-k", "3",
                 "--draw", str(picture), "--draw-top", "2", "--cache", cache]) == 0
    out = capsys.readouterr().out
    assert "inliers" in out
    assert Image.open(picture).size[1] == 2 * 240


@pytest.mark.slow
def test_cnn_pipelines_from_the_command_line(image_folder, data_dir, tmp_path, capsys):
    cache = str(tmp_path / "cache")
    other = str(tmp_path / "other")
    os.makedirs(other)
    for i in range(200, 232):  # whitening / vocabulary images, not the indexed ones
        shutil.copy(os.path.join(data_dir, "ukbench", f"ukbench{i:05d}.jpg"), other)
    index = str(tmp_path / "gem-index")
    assert main(["index", str(image_folder), "-o", index, "--method", "gem", "--whiten-root", other,
                 "--cache", cache]) == 0
    capsys.readouterr()
    assert main(["query", str(image_folder / "ukbench00006.jpg"), "--index", index, "--format", "jsonl",
                 "--top-k", "2", "--cache", cache]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["name"].endswith("ukbench00006.jpg")
    assert main(["query", str(image_folder / "ukbench00006.jpg"), "--index", index, "--format", "jsonl",
                 "--diffusion", "global", "--diffusion-alpha", "0.6", "--expand", "2", "--expand-alpha", "3",
                 "--cache", cache]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["name"].endswith("ukbench00006.jpg")
    assert main(["query", str(image_folder / "ukbench00006.jpg"), "--index", index, "--format", "jsonl",
                 "--diffusion", "global", "--diffusion-offline", "10", "--cache", cache]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["name"].endswith("ukbench00006.jpg")
    sideways = str(tmp_path / "sideways.png")  # ukbench00006 turned a quarter clockwise, losslessly
    Image.open(image_folder / "ukbench00006.jpg").convert("RGB").transpose(Image.Transpose.ROTATE_270).save(sideways)
    for rotations, best in (([], (0.0, 0.99)), (["--rotations", "0,90,270"], (0.999, 1.001))):
        assert main(["query", sideways, "--index", index, "--format", "jsonl", "--top-k", "4", "--cache", cache]
                    + rotations) == 0
        top = json.loads(capsys.readouterr().out.splitlines()[0])
        assert top["name"].endswith("ukbench00006.jpg") or not rotations
        assert best[0] <= top["score"] < best[1], (rotations, top)
    assert main(["query", str(image_folder / "ukbench00006.jpg"), "--index", index, "--diffusion", "regional"]) == 1
    assert "regional diffusion needs an index that stores R-MAC regions" in capsys.readouterr().err
    assert main(["query", str(image_folder / "ukbench00006.jpg"), "--index", index, "--expand-alpha", "3"]) == 1
    assert "--expand-alpha needs query expansion" in capsys.readouterr().err
    assert main(["eval", "--dataset", "ukbench", "--root", str(image_folder), "--method", "fusion",
                 "--train-root", other, "--whiten-root", other, "--branching", "20", "--cache", cache]) == 0
    assert "fusion  N-S" in capsys.readouterr().out
    assert main(["index", str(image_folder), "-o", str(tmp_path / "self"), "--method", "gem",
                 "--whiten-root", str(image_folder), "--cache", cache]) == 0
    assert "the whitening is learned on 17 of the indexed images" in capsys.readouterr().err  # broken.jpg too
    assert main(["eval", "--dataset", "ukbench", "--root", str(image_folder), "--method", "blcf",
                 "--train-root", other, "--branching", "12", "--cache", cache]) == 0
    assert "blcf  N-S" in capsys.readouterr().out
    assert main(["eval", "--dataset", "ukbench", "--root", str(image_folder), "--method", "sift-he",
                 "--branching", "20", "--cache", cache]) == 0
    assert "sift-he  N-S" in capsys.readouterr().out
    assert main(["vocab", other, "-o", str(tmp_path / "v"), "--method", "blcf"]) == 1
    assert "no separately trained vocabulary" in capsys.readouterr().err
