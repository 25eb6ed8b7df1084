"""``cbir train --from-block`` end to end on real photos: mine, train the last block with the head,
save the tuned blocks in the model, and index and query through them; `cbir info` tells both."""
import json
import os
import shutil

import pytest

from cbir.cli import main


@pytest.mark.slow
def test_train_the_last_block_then_index_and_query_through_it(tmp_path, capsys, data_dir):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(600, 624):  # 6 objects x 4 views
        shutil.copy(os.path.join(data_dir, "ukbench", f"ukbench{i:05d}.jpg"), folder)
    cache, model, index = str(tmp_path / "cache"), str(tmp_path / "model"), str(tmp_path / "index")
    assert main(["train", "--images", str(folder), "--out", model, "--from-block", "15", "--epochs", "2",
                 "--negatives", "2", "--dim", "16", "--init", "pca", "--branching", "16", "--depth", "2",
                 "--cache", cache, "--jobs", "2", "--device", "cpu"]) == 0
    assert "gem-fc head and backbone blocks 15..15, 2 epochs" in capsys.readouterr().out
    assert sum(f.endswith("-backbone.pt") for f in os.listdir(model)) == 1
    assert main(["info", model, "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["tuned_from_block"] == 15 and facts["settings"]["from_block"] == 15
    queries = [os.path.join(data_dir, "ukbench", f"ukbench{i:05d}.jpg") for i in range(0, 12)]
    assert main(["index", *queries, "-o", index, "--method", "gem-ft", "--model", model, "--cache", cache]) == 0
    capsys.readouterr()
    assert main(["info", index, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["learned_head"]["tuned_from_block"] == 15
    assert main(["query", queries[1], "--index", index, "--format", "jsonl", "--top-k", "4"]) == 0
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert results[0]["name"] == "ukbench00001.jpg"
