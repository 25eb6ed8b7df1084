"""``cbir train`` end to end on real photos: mine, train, index and query with the model; too few
pairs and an existing model are refused with one line; corrupt images are skipped and listed."""
import json
import os
import shutil

import pytest

from cbir.cli import main


@pytest.fixture(scope="module")
def training_folder(tmp_path_factory, data_dir):
    """24 UKBench photos (6 objects x 4 views) and a corrupt file."""
    folder = tmp_path_factory.mktemp("train-images")
    for i in range(600, 624):
        shutil.copy(os.path.join(data_dir, "ukbench", f"ukbench{i:05d}.jpg"), folder)
    (folder / "broken.jpg").write_text("not an image")
    return folder


@pytest.mark.slow
def test_train_then_index_and_query_with_the_model(training_folder, tmp_path, capsys, data_dir):
    cache, model, index = str(tmp_path / "cache"), str(tmp_path / "model"), str(tmp_path / "index")
    args = ["train", "--images", str(training_folder), "--out", model, "--epochs", "2", "--negatives", "2",
            "--dim", "16", "--init", "pca", "--branching", "16", "--depth", "2", "--cache", cache, "--jobs", "2"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "broken.jpg" in captured.err
    assert "gem-fc head, 2 epochs" in captured.out and "--method gem-ft --model" in captured.out
    assert sorted(os.listdir(model)) == sorted(["manifest.json", "pairs"] + [f for f in os.listdir(model)
                                                                          if f.endswith("-state.pt")])
    assert main(args) == 1
    assert "already holds a trained model; use --force" in capsys.readouterr().err
    assert main(["info", model, "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["head"] == "gem-fc" and facts["dim"] == 16 and facts["epochs"] == 2 and facts["data"]["images"] == 24
    queries = [os.path.join(data_dir, "ukbench", f"ukbench{i:05d}.jpg") for i in range(0, 12)]
    assert main(["index", *queries, "-o", index, "--method", "gem-ft", "--model", model, "--cache", cache]) == 0
    assert "index " in capsys.readouterr().out
    assert main(["query", queries[1], "--index", index, "--format", "jsonl", "--top-k", "4"]) == 0
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert results[0]["name"] == "ukbench00001.jpg"
    assert main(["index", str(training_folder), "-o", str(tmp_path / "seen"), "--method", "gem-ft", "--model", model,
                 "--cache", cache]) == 0
    assert "was trained on 24 of these 25 images" in capsys.readouterr().err


def test_gem_ft_without_a_model_and_a_model_for_another_pipeline_are_refused(training_folder, tmp_path, capsys):
    assert main(["index", str(training_folder), "-o", str(tmp_path / "i"), "--method", "gem-ft", "--cache", ""]) == 1
    assert "needs a trained model: train one with cbir train" in capsys.readouterr().err
    assert main(["index", str(training_folder), "-o", str(tmp_path / "i"), "--method", "gem", "--model",
                 str(tmp_path / "nowhere"), "--cache", ""]) == 1
    assert "uses no trained model; --model is for rmac-lw, gem-ft" in capsys.readouterr().err


def test_too_few_verified_pairs_say_how_many_were_found(tmp_path, capsys, data_dir):
    folder = tmp_path / "few"
    folder.mkdir()
    for i in (0, 100, 200, 300, 400):  # five different objects: nothing verifies
        shutil.copy(os.path.join(data_dir, "ukbench", f"ukbench{i:05d}.jpg"), folder)
    assert main(["train", "--images", str(folder), "--out", str(tmp_path / "model"), "--branching", "8",
                 "--depth", "2", "--cache", str(tmp_path / "cache"), "--jobs", "1"]) == 1
    err = capsys.readouterr().err
    assert "mining found 0 verified pairs" in err and "Add photos" in err
    assert not os.path.exists(tmp_path / "model" / "manifest.json")


def test_each_head_takes_its_own_training_defaults_and_explicit_values_win(training_folder, tmp_path, capsys,
                                                                          monkeypatch):
    """blcf-how trains with 20 epochs, batch 16, lr 3e-3 unless told otherwise; the other heads with 10, 32, 1e-4."""
    import cbir.learning
    seen = []

    def stop(paths, out, config, *args, **kwargs):
        seen.append(config)
        raise ValueError(f"{out}: stopped by the test")

    monkeypatch.setattr(cbir.learning, "train_model", stop)
    for extra in (["--head", "blcf-how"], ["--head", "blcf-how", "--lr", "1e-3", "--epochs", "5"], []):
        assert main(["train", "--images", str(training_folder), "--out", str(tmp_path / "m"), *extra]) == 1
        assert "stopped by the test" in capsys.readouterr().err
    assert [(c.head, c.epochs, c.batch, c.lr) for c in seen] == [
        ("blcf-how", 20, 16, 3e-3), ("blcf-how", 5, 16, 1e-3), ("gem-fc", 10, 32, 1e-4)]
