"""Write tiny indexes in the format of commit 39c043a (index format 1) for the compatibility test."""
import json, os, sys
import numpy as np
sys.path.insert(0, ".")
from bovw.vocabulary import VocabularyConfig
from cbir.pipelines import get_pipeline
from cbir.retrieval_index import RetrievalIndex, train_vocabulary, learn_hamming, save_vocabulary
from cnn.global_index import GlobalIndex
from index.datasets import ukbench

data = "../shared/data/ukbench"
ds = ukbench(data)
paths, names = ds.database_paths[:12], ds.database[:12]
out = "tests/data/format-v1"
os.makedirs(out, exist_ok=True)
expected = {}
for method, shape in (("sift-bow", (4, 3)), ("sift-he-sv", (8, 2))):
    p = get_pipeline(method)
    voc, _ = train_vocabulary(paths, p, VocabularyConfig(branching=shape[0], depth=shape[1], seed=0), None, verbose=False)
    ham = learn_hamming(paths, p, voc, None, verbose=False)[0] if p.hamming else None
    idx = RetrievalIndex(voc, p, hamming=ham)
    idx.add_images(paths, names, verbose=False)
    idx.save(f"{out}/{method}")
    if method == "sift-bow":
        save_vocabulary(voc, f"{out}/vocabulary")
    expected[method] = [[r.name, round(r.score, 6), r.inliers] for r in idx.search(paths[5], top_k=5)]
idx = GlobalIndex("rmac-rr", None)
idx.add_images(paths, names, verbose=False)
idx.save(f"{out}/rmac-rr")
expected["rmac-rr"] = [[r.name, round(r.score, 6), r.inliers] for r in idx.search(paths[5], top_k=5)]
json.dump({"query": names[5], "results": expected}, open(f"{out}/expected.json", "w"), indent=1)
print(expected)
