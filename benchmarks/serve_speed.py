"""How fast ``cbir serve`` answers, on the indexes ``make demo`` builds.

1. Upload to rendered results: in headless Chromium, a query image is chosen in the
   page's file input; the page's own clock runs from that moment until every result
   thumbnail of the first page (24) has loaded. Holidays query images (~320 px, as the
   benchmark) and full-size Sacre-Coeur photos (~1024 px, as a user's) are uploaded;
   each upload is a new query (no cached work).
2. Search by indexed name under load: 1, 4 and 16 concurrent clients post searches by
   the name of an indexed image (each request a different image, so the server's query
   store never answers from memory; features come from the feature cache, as for any
   indexed image), against 127.0.0.1 only. Requests per second and latency percentiles.

The server runs as users start it (``cbir serve``, ``--jobs 1``: one thread per search).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import glob
import json
import os
import time
import urllib.parse
import urllib.request

import numpy as np

from benchmarks.common import DEFAULT_DATA, REPO, write_result
from cbir.server.harness import headless_chromium, start_server, stop_server


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DEFAULT_DATA, help="shared data folder")
    parser.add_argument("--work", default=os.path.join(REPO, "work"), help="make demo's work folder")
    parser.add_argument("--targets", default="index-sift-141x2-he-holidays:sift-he-sv-qe,index-rmac-holidays:rmac",
                        help="INDEX:PIPELINE pairs to time (indexes are folders under --work)")
    parser.add_argument("--uploads", type=int, default=8, help="Holidays query images uploaded per target")
    parser.add_argument("--photos", type=int, default=5, help="Sacre-Coeur photos uploaded per target")
    parser.add_argument("--clients", default="1,4,16", help="concurrent clients of the load test")
    parser.add_argument("--requests", type=int, default=48, help="requests per load level")
    parser.add_argument("--name", default="serve_speed", help="result file name under benchmarks/results")
    return parser.parse_args()


def upload_times(driver, url: str, target: str, paths: list[str]) -> tuple[list[float], list[float]]:
    """(page ms from choosing the file to all thumbnails shown, server ms) per uploaded path."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait
    driver.get(url)
    WebDriverWait(driver, 60).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
    Select(driver.find_element(By.ID, "target-a")).select_by_value(target)
    page_ms, server_ms = [], []
    for path in paths:
        before = driver.execute_script("return Number(document.body.dataset.searches || 0)")
        driver.find_element(By.ID, "file-input").send_keys(os.path.realpath(path))
        WebDriverWait(driver, 300).until(
            lambda d: d.execute_script("return Number(document.body.dataset.searches || 0)") > before)
        page_ms.append(float(driver.execute_script("return document.body.dataset.renderMs")))
        server_ms.append(float(driver.execute_script("return state.columns.a.elapsed_ms")))
    return page_ms, server_ms


def search_by_name(url: str, index: str, target: str, name: str) -> float:
    """Milliseconds of one ``POST /api/search`` by an indexed image's name."""
    body = urllib.parse.urlencode({"index": index, "name": name, "target": target, "limit": 24}).encode()
    start = time.perf_counter()
    with urllib.request.urlopen(urllib.request.Request(url + "api/search", data=body), timeout=600) as response:
        answer = json.load(response)
    assert answer["searches"][0]["results"], name
    return (time.perf_counter() - start) * 1e3


def load_level(url: str, target: str, names: list[str], clients: int) -> tuple[float, np.ndarray]:
    """(requests per second, per-request ms) of searching every name with ``clients`` at once."""
    index = target.rpartition(":")[0]
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        latencies = list(pool.map(lambda name: search_by_name(url, index, target, name), names))
    return len(names) / (time.perf_counter() - start), np.asarray(latencies)


def main():
    args = parse_args()
    targets = args.targets.split(",")
    indexes = sorted({t.rpartition(":")[0] for t in targets})
    holidays = os.path.join(args.data, "holidays")
    process, url = start_server([a for index in indexes for a in ("--index", os.path.join(args.work, index))] +
                                ["--benchmark", f"holidays:{holidays}", "--cache", os.path.join(args.work, "features"),
                                 "--jobs", "1"])
    try:
        names = json.load(urllib.request.urlopen(url + f"api/indexes/{indexes[0]}/names?limit=200"))["names"]
        names += json.load(urllib.request.urlopen(url + f"api/indexes/{indexes[0]}/names?offset=200&limit=200"))["names"]
        for target in targets:  # loads torch, compiles numba kernels: not a user's steady state
            search_by_name(url, target.rpartition(":")[0], target, names[-1])
        queries = sorted(glob.glob(os.path.join(holidays, "1*00.jpg")))[:args.uploads]
        photos = sorted(glob.glob(os.path.join(args.data, "sacre_coeur", "*.jpg")))[:args.photos]
        driver = headless_chromium()
        rows = []
        try:
            for target in targets:
                for label, paths in (("Holidays query (~320 px)", queries), ("Sacre-Coeur photo (~1024 px)", photos)):
                    page_ms, server_ms = upload_times(driver, url, target, paths)
                    rows.append(f"| {target.rpartition(':')[2]} | {label} | {len(paths)} | {np.median(page_ms):.0f} | "
                                f"{np.max(page_ms):.0f} | {np.median(server_ms):.0f} |")
                    print(rows[-1], flush=True)
        finally:
            driver.quit()
        load_rows, used = [], 0
        levels = [int(c) for c in args.clients.split(",")]
        for target in targets:
            base = None
            for clients in levels:
                batch = names[used:used + args.requests]
                used += args.requests
                rate, latencies = load_level(url, target, batch, clients)
                base = base or rate
                load_rows.append(f"| {target.rpartition(':')[2]} | {clients} | {len(batch)} | {rate:.1f} | "
                                 f"{rate / base:.2f} | {np.median(latencies):.0f} | {np.percentile(latencies, 95):.0f} |")
                print(load_rows[-1], flush=True)
    finally:
        stop_server(process)
    body = ("Upload to rendered results (headless Chromium on the same machine; page clock from choosing the file "
            "to every thumbnail of the first page loaded; server = extraction + search as the server timed it):\n\n"
            "| pipeline | query | uploads | page ms median | page ms max | server ms median |\n|---|---|---|---|---|---|\n"
            + "\n".join(rows) +
            "\n\nSearch by indexed name, concurrent clients (each request a different image; first page of 24):\n\n"
            "| pipeline | clients | requests | requests/s | ratio to 1 client | ms median | ms p95 |\n"
            "|---|---|---|---|---|---|---|\n" + "\n".join(load_rows) + "\n")
    print(write_result(args.name, body))


if __name__ == "__main__":
    main()
