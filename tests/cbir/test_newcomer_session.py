"""A newcomer's session with the real ``cbir`` executable, on shared photos: the happy path
(vocab -> index -> batch query to a file -> info -> remove -> query again) and every mistake
a user made in trials, each ending in one line on stderr and a documented exit code."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

CBIR = os.path.join(os.path.dirname(sys.executable), "cbir")


def cbir(*args, cwd=None):
    result = subprocess.run([CBIR, *map(str, args)], capture_output=True, text=True, timeout=300, cwd=cwd)
    return result.returncode, result.stdout, result.stderr


@pytest.fixture(scope="module")
def session(tmp_path_factory, data_dir):
    """Photos in a folder (with one broken file), a vocabulary, an index built from another directory."""
    home = tmp_path_factory.mktemp("newcomer")
    photos = home / "photos"
    photos.mkdir()
    for i in range(12):
        shutil.copy(os.path.join(data_dir, "ukbench", f"ukbench{i:05d}.jpg"), photos / f"photo{i:02d}.jpg")
    (photos / "notes.jpg").write_text("not a photo")
    cache = home / "cache"
    code, out, err = cbir("vocab", photos, "-o", home / "vocab", "--branching", "16", "--depth", "2", "--cache", cache)
    assert code == 0, err
    code, out, err = cbir("index", "photos", "-o", home / "index", "--vocab", home / "vocab", "--cache", cache,
                          cwd=home)
    assert code == 0, err
    assert "notes.jpg: not an image file" in err and "12 images" in out
    return home, photos, cache


def test_batch_query_writes_every_result_with_names_and_paths(session):
    home, photos, cache = session
    listing = home / "queries.txt"
    listing.write_text(f"{photos / 'photo01.jpg'}\n{photos / 'photo05.jpg'}\n")
    code, out, err = cbir("query", f"@{listing}", photos / "photo09.jpg", "--index", home / "index", "--top-k", "2",
                          "--format", "jsonl", "-o", home / "results.jsonl", "--cache", cache)
    assert code == 0, err
    rows = [json.loads(line) for line in open(home / "results.jsonl")]
    assert [(os.path.basename(r["query"]), r["rank"]) for r in rows] == [
        ("photo01.jpg", 1), ("photo01.jpg", 2), ("photo05.jpg", 1), ("photo05.jpg", 2), ("photo09.jpg", 1),
        ("photo09.jpg", 2)]
    assert rows[0]["name"] == "photo01.jpg" and rows[0]["path"] == os.path.realpath(photos / "photo01.jpg")
    code, out, err = cbir("query", photos / "photo05.jpg", "--index", home / "index", "--top-k", "3",
                          "--exclude-self", "--format", "pairs", "--cache", cache)
    pairs = [line.split() for line in out.splitlines()]
    assert code == 0 and len(pairs) == 3 and all(os.path.basename(db) != "photo05.jpg" for _, db in pairs)
    assert {os.path.basename(db) for _, db in pairs} & {"photo04.jpg", "photo06.jpg", "photo07.jpg"}


def test_info_then_remove_then_query_again(session, tmp_path):
    home, photos, cache = session
    index = tmp_path / "index"
    shutil.copytree(home / "index", index)
    code, out, err = cbir("info", index, "--json")
    facts = json.loads(out)
    assert code == 0 and facts["images"] == 12 and facts["pipeline"] == "sift-bow"
    assert facts["collection_root"] == os.path.realpath(photos) and facts["vocabulary_words"] == 256
    code, out, err = cbir("remove", index, "photo05.jpg")
    assert code == 0 and "11 images left" in out, err
    code, out, err = cbir("query", photos / "photo05.jpg", "--index", index, "--top-k", "11", "--cache", cache)
    assert code == 0 and "photo05.jpg" not in out and len(out.splitlines()) == 11
    code, out, err = cbir("remove", index, "photo05.jpg")
    assert code == 1 and err.strip() == "cbir: no image named 'photo05.jpg' in the index"


def test_cache_info_and_clean(session, tmp_path):
    home, photos, _ = session
    cache = tmp_path / "cache"
    shutil.copytree(session[2], cache)
    code, out, err = cbir("cache", "info", "--cache", cache, "--json")
    facts = json.loads(out)
    assert code == 0 and facts["entries"] == 12 and facts["bytes"] > 0, err  # the 12 photos (+ 0 for notes.jpg)
    code, out, err = cbir("cache", "clean", "--max-size", "1K", "--cache", cache)
    assert code == 0 and "removed 12 images" in out, err
    code, out, err = cbir("cache", "clean", "--cache", cache)
    assert code == 1 and "needs --older-than DAYS and/or --max-size SIZE" in err


def test_mistakes_end_in_one_line_and_an_exit_code(session, tmp_path):
    home, photos, cache = session
    index = home / "index"
    query = photos / "photo03.jpg"
    mistakes = [
        (["index", tmp_path / "phtos", "-o", tmp_path / "typo", "--vocab", home / "vocab"], 1, "phtos: no such file"),
        (["index", home / "empty-folder-file.txt", "-o", tmp_path / "bad", "--vocab", home / "vocab"], 1,
         "no image could be added"),
        (["query", query, "--index", index, "--box", "1,2,3"], 1, "a box is four numbers"),
        (["query", query, "--index", index, "--box", "500,10,600,40"], 1,
         "keeps less than 2x2 pixels of the 320x240 query image"),
        (["query", query, "--index", index, "--top-k", "0"], 2, "--top-k must be at least 1"),
        (["query", query, "--index", tmp_path / "nowhere"], 1, "not a saved index"),
        (["query", photos / "notes.jpg", "--index", index], 1, "notes.jpg: not an image file"),
        (["index", photos, "-o", index, "--add", "--method", "sift-he"], 1, "--add keeps its method"),
        (["index", photos, "-o", tmp_path / "he", "--method", "sift-he", "--vocab", home / "vocab"], 1,
         "was trained for sift-bow (256 words); sift-he uses a 19881-word vocabulary"),
        (["query", query, "--index", index, "--search", "blcf"], 1, "'blcf' is built differently"),
    ]
    (home / "empty-folder-file.txt").write_text("")
    for args, code, message in mistakes:
        got, out, err = cbir(*args, "--cache", cache)
        last = err.strip().splitlines()[-1]  # a build lists its skipped files first
        assert got == code and message in last and last.startswith("cbir: "), (args, got, err)
        assert "Traceback" not in err and (args[0] == "index" or len(err.strip().splitlines()) == 1), err
    assert not (tmp_path / "typo").exists() and not (tmp_path / "bad").exists()


def test_ctrl_c_ends_in_one_line_and_exit_130(session, tmp_path, data_dir):
    home, photos, cache = session
    many = tmp_path / "many"
    many.mkdir()
    for i in range(1000):  # 200 images were all indexed within the 4 s by 2 worker processes
        shutil.copy(os.path.join(data_dir, "ukbench", f"ukbench{i:05d}.jpg"), many)
    process = subprocess.Popen([CBIR, "index", many, "-o", tmp_path / "idx", "--vocab", home / "vocab",
                                "--cache", ""], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               # a test run started in the background inherits SIGINT ignored: a user's shell does not
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(4)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130 and err.strip().splitlines()[-1] == "cbir: interrupted", err
    assert "Traceback" not in err and not (tmp_path / "idx").exists()
