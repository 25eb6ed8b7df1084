"""The JSON API of ``cbir serve``, without a browser, on real indexes of UKBench images."""
from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from cbir.searchable import load_index
from index.datasets import ukbench

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from cbir.server.app import create_app  # noqa: E402
from cbir.server.served import load_served  # noqa: E402

SIFT, RMAC, BLCF = "sift", "rmac", "blcf"
UPLOAD_LIMIT = 2 * 2 ** 20


@pytest.fixture(scope="module")
def served(served_dirs, ukbench_root, feature_cache_dir):
    return load_served([served_dirs[k] for k in (SIFT, RMAC, BLCF)], [ukbench(ukbench_root)], feature_cache_dir)


@pytest.fixture(scope="module")
def client(served):
    return TestClient(create_app(served, max_upload_bytes=UPLOAD_LIMIT), raise_server_exceptions=False)


def search(client, **fields):
    files = {"file": fields.pop("file")} if "file" in fields else None
    targets = fields.pop("target", [])
    data = {**fields, "target": targets}
    return client.post("/api/search", data=data, files=files)


def names(page):
    return [r["name"] for r in page["results"]]


def test_indexes_list_their_pipelines_and_benchmark(client):
    listed = {i["id"]: i for i in client.get("/api/indexes").json()}
    assert listed[SIFT]["pipelines"][:3] == ["sift-bow", "sift-sv", "sift-sv-qe"]
    assert listed[RMAC]["pipelines"][0] == "rmac" and "rmac-diffusion" in listed[RMAC]["pipelines"]
    assert listed[SIFT]["images"] == 60 and listed[RMAC]["images"] == 24
    assert listed[SIFT]["benchmark"] == {"name": "ukbench", "metric": "N-S", "queries": 60}
    assert listed[RMAC]["benchmark"]["queries"] == 24
    info = client.get(f"/api/indexes/{SIFT}").json()["info"]
    assert info["pipeline"] == "sift-bow" and info["images"] == 60


def test_search_by_name_ranks_as_the_index_does(client, served_dirs, ukbench_root):
    answer = search(client, index=SIFT, name="ukbench00004.jpg", target=[f"{SIFT}:sift-sv"], limit="10").json()
    page = answer["searches"][0]
    assert set(names(page)[:4]) == {f"ukbench{i:05d}.jpg" for i in range(4, 8)}
    assert all(r["inliers"] >= 100 for r in page["results"][:4])
    assert page["total"] == 60 and page["collection"] == 60 and len(page["results"]) == 10
    assert answer["query"]["label"] == f"{SIFT}/ukbench00004.jpg" and answer["query"]["box"] is None
    direct = load_index(served_dirs[SIFT]).search(os.path.join(ukbench_root, "ukbench00004.jpg"), top_k=10,
                                                  options="sift-sv")
    assert [(r["name"], r["score"]) for r in page["results"]] == [(r.name, round(r.score, 5)) for r in direct]


def test_upload_is_searched_in_two_indexes_at_once(client, ukbench_root):
    with open(os.path.join(ukbench_root, "ukbench00013.jpg"), "rb") as handle:
        content = handle.read()
    answer = search(client, file=("photo.jpg", content, "image/jpeg"),
                    target=[f"{SIFT}:sift-sv-qe", f"{RMAC}:rmac"]).json()
    sift, rmac = answer["searches"]
    assert names(sift)[0] == "ukbench00013.jpg" and names(rmac)[0] == "ukbench00013.jpg"
    assert set(names(rmac)[:4]) == {f"ukbench{i:05d}.jpg" for i in range(12, 16)}
    assert answer["query"]["label"] == "photo.jpg" and answer["query"]["width"] == 320


def test_a_box_restricts_the_query(client, served):
    whole = search(client, index=SIFT, name="ukbench00020.jpg", target=[f"{SIFT}:sift-bow"]).json()
    query_id = whole["query"]["id"]
    boxed = search(client, query=query_id, box="0,0,120,100", target=[f"{SIFT}:sift-bow"]).json()
    assert boxed["query"]["box"] == [0, 0, 120, 100] and boxed["query"]["id"] != query_id
    whole_scores = [r["score"] for r in whole["searches"][0]["results"]]
    boxed_scores = [r["score"] for r in boxed["searches"][0]["results"]]
    assert whole_scores != boxed_scores
    expected = served[SIFT].index.search(served[SIFT].path_of("ukbench00020.jpg"), top_k=3, box=(0, 0, 120, 100))
    assert names(boxed["searches"][0])[:3] == [r.name for r in expected]
    whole_again = search(client, query=boxed["query"]["id"], target=[f"{SIFT}:sift-bow"]).json()
    assert whole_again["query"]["id"] == query_id and whole_again["searches"] == whole["searches"]
    bad = search(client, query=query_id, box="50,50,10,10")
    assert bad.status_code == 400 and "is empty" in bad.json()["detail"]


def test_pages_continue_the_ranking(client):
    first = search(client, index=SIFT, name="ukbench00004.jpg", target=[f"{SIFT}:sift-bow"], limit="12").json()
    query_id = first["query"]["id"]
    page = client.get(f"/api/queries/{query_id}/results", params={"target": f"{SIFT}:sift-bow", "offset": 4,
                                                                  "limit": 4}).json()
    assert [r["rank"] for r in page["results"]] == [5, 6, 7, 8]
    assert names(page) == names(first["searches"][0])[4:8]
    assert client.get(f"/api/queries/{query_id}/results", params={"target": f"{SIFT}:sift-bow",
                                                                   "limit": 1000}).status_code == 400


def test_verified_match_lines_follow_the_homography(client, served):
    answer = search(client, index=SIFT, name="ukbench00004.jpg", target=[f"{SIFT}:sift-sv"]).json()
    query_id, page = answer["query"]["id"], answer["searches"][0]
    second = page["results"][1]
    assert second["inliers"] is not None
    match = client.get(f"/api/queries/{query_id}/match", params={"target": f"{SIFT}:sift-sv",
                                                                  "name": second["name"]}).json()
    assert match["kind"] == "lines" and len(match["query_points"]) >= second["inliers"] == match["inliers"]
    index = served[SIFT].index
    height, width = index.images.image_sizes[index.names.slots([second["name"]])[0]]
    query = np.asarray(match["query_points"]) * [answer["query"]["width"], answer["query"]["height"]]
    result = np.asarray(match["result_points"]) * [width, height]
    verified = index.search(served[SIFT].path_of("ukbench00004.jpg"), top_k=2, options="sift-sv")[1]
    mapped = np.c_[query, np.ones(len(query))] @ verified.homography.T
    error = np.linalg.norm(mapped[:, :2] / mapped[:, 2:] - result, axis=1)
    assert np.median(error) < 10  # pixels: the lines join points the homography maps onto each other
    assert len(match["outline"]) == 4


def test_unverified_result_shows_shared_words(client):
    answer = search(client, index=SIFT, name="ukbench00008.jpg", target=[f"{SIFT}:sift-bow"]).json()
    match = client.get(f"/api/queries/{answer['query']['id']}/match",
                       params={"target": f"{SIFT}:sift-bow", "name": "ukbench00009.jpg"}).json()
    assert match["kind"] == "words" and 0 < len(match["query_points"]) == len(match["result_points"])
    assert np.all((np.asarray(match["result_points"]) >= 0) & (np.asarray(match["result_points"]) <= 1))


def test_rmac_result_shows_its_best_regions(client):
    answer = search(client, index=RMAC, name="ukbench00001.jpg", target=[f"{RMAC}:rmac"]).json()
    match = client.get(f"/api/queries/{answer['query']['id']}/match",
                       params={"target": f"{RMAC}:rmac", "name": names(answer["searches"][0])[1]}).json()
    boxes = np.asarray(match["result_boxes"])
    assert match["kind"] == "regions" and boxes.shape == (3, 4)
    assert np.all(boxes[:, 2:] > boxes[:, :2]) and boxes.min() >= 0 and boxes.max() <= 1
    assert match["scores"] == sorted(match["scores"], reverse=True)


def test_blcf_result_shows_matching_cells_and_window(client):
    answer = search(client, index=BLCF, name="ukbench00016.jpg", target=[f"{BLCF}:blcf-ls"]).json()
    second = names(answer["searches"][0])[1]
    match = client.get(f"/api/queries/{answer['query']['id']}/match",
                       params={"target": f"{BLCF}:blcf-ls", "name": second}).json()
    assert match["kind"] == "cells" and len(match["result_boxes"]) > 10 and len(match["query_boxes"]) > 10
    x0, y0, x1, y1 = match["window"]
    assert 0 <= x0 < x1 <= 1.0001 and 0 <= y0 < y1 <= 1.0001


def test_images_are_served_by_name_only(client):
    response = client.get(f"/api/indexes/{SIFT}/images/ukbench00003.jpg", params={"size": 200})
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(response.content)).size) == 256  # the served size above 200
    for name in ("..%2F..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "../ukbench/ukbench00003.jpg",
                 "ukbench00003.jpg%00.png"):
        refused = client.get(f"/api/indexes/{SIFT}/images/{name}")
        assert refused.status_code == 404, name
    assert client.get("/api/indexes/nope/images/ukbench00003.jpg").status_code == 404
    assert client.get("/static/../../../etc/passwd").status_code == 404


def test_oversized_uploads_are_refused_and_the_server_goes_on(client):
    big = os.urandom(UPLOAD_LIMIT + 200_000)
    response = search(client, file=("huge.jpg", big, "image/jpeg"))
    assert response.status_code == 413 and "limit of 2.0 MB" in response.json()["detail"]
    just_over = search(client, file=("over.jpg", big[:UPLOAD_LIMIT + 1000], "image/jpeg"))  # within the form slack
    assert just_over.status_code == 413 and just_over.json()["detail"].startswith("over.jpg: 2.0 MB, over")

    def chunks():  # no declared length: refused while streaming
        for start in range(0, len(big), 65536):
            yield big[start:start + 65536]
    streamed = client.post("/api/search", content=chunks(),
                           headers={"content-type": "multipart/form-data; boundary=x"})
    assert streamed.status_code == 413
    assert client.get("/api/indexes").status_code == 200


def test_bad_uploads_get_one_line_errors(client, tmp_path):
    corrupt = search(client, file=("broken.jpg", b"\xff\xd8\xff\xe0 not really a jpeg", "image/jpeg"))
    assert corrupt.status_code == 400
    assert corrupt.json()["detail"].startswith("broken.jpg: ") and "\n" not in corrupt.json()["detail"]
    bomb = io.BytesIO()
    Image.new("L", (9000, 9000)).save(bomb, "PNG")  # 81 megapixels, a few kB compressed
    refused = search(client, file=("bomb.png", bomb.getvalue(), "image/png"))
    assert refused.status_code == 400 and "exceeds the limit" in refused.json()["detail"]
    assert search(client).status_code == 400
    assert client.get("/api/indexes").status_code == 200


def test_unknown_things_are_404(client):
    answer = search(client, index=SIFT, name="ukbench00001.jpg").json()
    query_id = answer["query"]["id"]
    assert answer["searches"][0]["pipeline"] == "sift-bow"  # the first index's own pipeline by default
    assert search(client, index=SIFT, name="missing.jpg").status_code == 404
    assert client.get("/api/queries/0123/results", params={"target": SIFT}).status_code == 404
    for target in (f"{SIFT}:rmac", f"{SIFT}:nope", "nope:sift-bow"):
        response = client.get(f"/api/queries/{query_id}/results", params={"target": target})
        assert response.status_code == 404 and "nope" in response.json()["detail"] or "rmac" in target
    assert client.get(f"/api/queries/{query_id}/match", params={"target": SIFT, "name": "x.jpg"}).status_code == 404


def test_names_are_paged_and_filtered(client):
    page = client.get(f"/api/indexes/{SIFT}/names", params={"offset": 10, "limit": 5}).json()
    assert page["total"] == 60 and page["names"] == [f"ukbench{i:05d}.jpg" for i in range(10, 15)]
    found = client.get(f"/api/indexes/{SIFT}/names", params={"contains": "ukbench0005"}).json()
    assert found["names"] == [f"ukbench{i:05d}.jpg" for i in range(50, 60)]


def test_evaluation_scores_every_benchmark_query(client, served, ukbench_subset):
    from cbir.evaluate import run_queries
    evaluation = client.get("/api/evaluation", params={"target": f"{SIFT}:sift-bow"}).json()
    expected = run_queries(served[SIFT].index, ukbench_subset, progress=False).scores["N-S"]
    scores = [q["score"] for q in evaluation["queries"]]
    assert evaluation["metric"] == "N-S" and len(scores) == 60 and all(0 <= s <= 4 for s in scores)
    assert evaluation["mean"] == pytest.approx(expected) == pytest.approx(np.mean(scores))


def test_boxes_are_checked_and_clipped(client):
    query_id = search(client, index=SIFT, name="ukbench00020.jpg").json()["query"]["id"]
    infinite = search(client, query=query_id, box="0,0,inf,10")
    assert infinite.status_code == 400 and "four finite numbers" in infinite.json()["detail"]
    clipped = search(client, query=query_id, box="-10,-10,5000,120").json()["query"]
    assert clipped["box"] == [0, 0, 320, 120]
    tiny = search(client, query=query_id, box="319,0,400,50")
    assert tiny.status_code == 400 and "keeps less than 2x2 pixels of the 320x240" in tiny.json()["detail"]
    assert search(client, query=query_id, limit="abc").json()["detail"].startswith("limit must be a whole number")
    invalid = client.get(f"/api/queries/{query_id}/results", params={"target": SIFT, "offset": -1})
    assert invalid.status_code == 400 and invalid.json()["detail"].startswith("offset: ")


def test_each_upload_keeps_its_own_label(client, ukbench_root):
    with open(os.path.join(ukbench_root, "ukbench00002.jpg"), "rb") as handle:
        content = handle.read()
    first = search(client, file=("first.jpg", content, "image/jpeg")).json()["query"]
    second = search(client, file=("second.jpg", content, "image/jpeg")).json()["query"]
    assert first["id"] == second["id"] and (first["label"], second["label"]) == ("first.jpg", "second.jpg")


def test_an_index_without_an_image_folder_never_reads_the_working_folder(served_dirs, feature_cache_dir, tmp_path,
                                                                         monkeypatch, caplog):
    served = load_served([served_dirs[SIFT]], [], feature_cache_dir)
    served[SIFT].index.root = None  # as an index built before roots were recorded
    client = TestClient(create_app(served), raise_server_exceptions=False)
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (64, 64)).save(tmp_path / "ukbench00003.jpg")  # a file of that name where the server runs
    response = client.get(f"/api/indexes/{SIFT}/images/ukbench00003.jpg")
    assert response.status_code == 404 and "does not record the folder of its images" in response.json()["detail"]
    assert search(client, index=SIFT, name="ukbench00003.jpg").status_code == 404


def test_docs_need_no_network_and_the_schema_is_served(client):
    assert client.get("/docs").status_code == 404
    assert "/api/search" in client.get("/openapi.json").json()["paths"]


def test_serve_refuses_bad_settings_before_loading(tmp_path, capsys):
    import socket
    from cbir.cli import main
    index = str(tmp_path / "nothing-loaded")
    for arguments, message in ((["--port", "99999"], "--port must lie in 1..65535"),
                               (["--jobs", "0"], "--jobs must be a positive count"),
                               (["--max-upload", "0"], "--max-upload must be positive")):
        assert main(["serve", "--index", index, *arguments]) == 1
        assert message in capsys.readouterr().err
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        assert main(["serve", "--index", index, "--port", str(port)]) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    assert main(["serve", "--index", index, "--port", "0"]) == 1
    assert "--port must lie in 1..65535" in capsys.readouterr().err


def test_a_sharded_index_shows_the_matches_of_the_merged_one(client, served_dirs, ukbench_root, feature_cache_dir,
                                                             tmp_path, capsys):
    from cbir.cli import main
    from cbir.sharded_index import split_index
    split_index(load_index(served_dirs[SIFT]), 3).save(str(tmp_path / "sharded"))
    sharded = TestClient(create_app(load_served([str(tmp_path / "sharded")], [], feature_cache_dir)))
    matches = []
    for app, index in ((client, SIFT), (sharded, "sharded")):
        answer = search(app, index=index, name="ukbench00004.jpg", target=[f"{index}:sift-sv"]).json()
        name = names(answer["searches"][0])[1]
        matches.append(app.get(f"/api/queries/{answer['query']['id']}/match",
                               params={"target": f"{index}:sift-sv", "name": name}).json())
    assert matches[0]["kind"] == "lines" and matches[0]["name"] == matches[1]["name"]
    assert {k: matches[0][k] for k in ("query_points", "result_points", "outline")} == \
        {k: matches[1][k] for k in ("query_points", "result_points", "outline")}
    drawn = tmp_path / "drawn.png"
    assert main(["query", os.path.join(ukbench_root, "ukbench00004.jpg"), "--index", str(tmp_path / "sharded"),
                 "--search", "sift-sv", "--draw", str(drawn), "--cache", feature_cache_dir]) == 0
    assert Image.open(drawn).size[0] > 300
    capsys.readouterr()


def test_an_index_saved_to_turn_its_queries_is_refused_by_name(served_dirs, feature_cache_dir, tmp_path):
    """The page shows and explains one orientation of a query: an index whose saved search options
    turn it (possible from Python) is refused when served, naming it, instead of failing per query."""
    import dataclasses
    index = load_index(served_dirs[RMAC], cache_dir=feature_cache_dir)
    index.pipeline = dataclasses.replace(index.pipeline, search=dataclasses.replace(
        index.pipeline.search, query_rotations=(0, 90, 270)))
    index.save(str(tmp_path / "turned"))
    with pytest.raises(ValueError, match="turned: its saved search options turn the query"):
        load_served([str(tmp_path / "turned")], [], feature_cache_dir)
