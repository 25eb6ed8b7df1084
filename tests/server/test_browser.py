"""The page of ``cbir serve`` in a real headless Chromium (Debian's chromium and chromium-driver,
installed by ``make browser``), driven by selenium against the real command on real indexes.

Each test saves a screenshot in its output folder (and in ``$CBIR_SCREENSHOT_DIR`` when set).
"""
from __future__ import annotations

import os
import shutil

import pytest

pytest.importorskip("selenium")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.select import Select  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from cbir.server.harness import chromium_installed, headless_chromium, start_server, stop_server  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(served_dirs, ukbench_root, feature_cache_dir):
    """``cbir serve`` on the SIFT and R-MAC indexes with UKBench's ground truth: its URL."""
    process, url = start_server(["--index", served_dirs["sift"], "--index", served_dirs["rmac"], "--benchmark",
                                 f"ukbench:{ukbench_root}", "--cache", feature_cache_dir, "--max-upload", "2M",
                                 "--jobs", "1"])
    yield url
    stop_server(process)


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium; skipped where it is not installed, except on CI, where that fails."""
    if not chromium_installed():
        message = "chromium and chromedriver are not installed (make browser, as root)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    driver = headless_chromium()
    yield driver
    driver.quit()


@pytest.fixture
def page(browser, server, request, tmp_path):
    """The page freshly opened; a screenshot is saved after the test."""
    browser.get(server)
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
    yield browser
    shot = tmp_path / f"{request.node.name}.png"
    browser.save_screenshot(str(shot))
    if os.environ.get("CBIR_SCREENSHOT_DIR"):
        shutil.copy(shot, os.path.join(os.environ["CBIR_SCREENSHOT_DIR"], shot.name))


def searches_done(driver) -> int:
    return int(driver.find_element(By.TAG_NAME, "body").get_attribute("data-searches") or 0)


def wait_for_search(driver, done_before: int):
    WebDriverWait(driver, 60).until(lambda d: searches_done(d) > done_before or
                                    d.find_element(By.ID, "error").is_displayed())


def result_names(driver, column: str = "a") -> list[str]:
    return [e.get_attribute("data-name") for e in driver.find_elements(By.CSS_SELECTOR, f"#results-{column} .result")]


def upload(driver, path: str):
    before = searches_done(driver)
    driver.find_element(By.ID, "file-input").send_keys(os.path.realpath(path))
    wait_for_search(driver, before)


def test_uploaded_query_finds_its_image_first(page, ukbench_root):
    Select(page.find_element(By.ID, "target-a")).select_by_value("sift:sift-sv")
    upload(page, os.path.join(ukbench_root, "ukbench00013.jpg"))
    assert not page.find_element(By.ID, "error").is_displayed()
    assert result_names(page)[0] == "ukbench00013.jpg"
    first = page.find_element(By.CSS_SELECTOR, '#results-a .result[data-rank="1"]')
    assert "inliers" in first.text and first.find_element(By.TAG_NAME, "img").get_attribute("naturalWidth") != "0"


def test_drawing_a_box_searches_again(page, ukbench_root):
    upload(page, os.path.join(ukbench_root, "ukbench00020.jpg"))
    whole = page.execute_script("return state.columns.a.results.map(r => r.score)")
    canvas = page.find_element(By.ID, "query-canvas")
    width, height = canvas.size["width"], canvas.size["height"]
    before = searches_done(page)
    ActionChains(page).move_to_element_with_offset(canvas, -width // 2 + 5, -height // 2 + 5).click_and_hold() \
        .move_by_offset(width // 3, height // 3).release().perform()
    wait_for_search(page, before)
    box = page.execute_script("return state.query.box")
    assert box is not None and box[0] < 20 and 60 < box[2] < 150  # pixels of the 320x240 query
    assert page.find_element(By.ID, "clear-box").is_displayed()
    assert page.execute_script("return state.columns.a.results.map(r => r.score)") != whole


def test_result_opens_a_match_view_with_lines(page, ukbench_root):
    Select(page.find_element(By.ID, "target-a")).select_by_value("sift:sift-sv")
    upload(page, os.path.join(ukbench_root, "ukbench00004.jpg"))
    page.find_element(By.CSS_SELECTOR, '#results-a .result[data-rank="2"]').click()
    WebDriverWait(page, 30).until(ec.visibility_of_element_located((By.ID, "match-view")))
    canvas = page.find_element(By.ID, "match-canvas")
    assert canvas.get_attribute("data-kind") == "lines" and int(canvas.get_attribute("data-lines")) > 50
    assert "inliers" in page.find_element(By.ID, "match-summary").text


def test_comparison_shows_two_columns_and_marks_what_only_one_found(page, ukbench_root):
    Select(page.find_element(By.ID, "target-a")).select_by_value("sift:sift-sv-qe")
    Select(page.find_element(By.ID, "target-b")).select_by_value("rmac:rmac")
    page.find_element(By.ID, "compare").click()
    upload(page, os.path.join(ukbench_root, "ukbench00009.jpg"))
    left, right = result_names(page, "a"), result_names(page, "b")
    assert left[0] == right[0] == "ukbench00009.jpg"
    assert page.find_element(By.ID, "column-b").is_displayed() and len(right) == 24  # the R-MAC index's size
    only_left = {e.find_element(By.XPATH, "..").get_attribute("data-name")
                 for e in page.find_elements(By.CSS_SELECTOR, "#results-a .only")}
    assert only_left == set(left[:len(right)]) - set(right) and only_left  # images 24-59 are not in R-MAC's index


def test_corrupt_upload_shows_an_error(page, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    upload(page, str(broken))
    error = page.find_element(By.ID, "error")
    assert error.is_displayed() and error.text.startswith("broken.jpg: ")
    assert page.find_elements(By.CSS_SELECTOR, "#results-a .result") == []


def test_evaluation_view_sorts_queries_and_opens_one(page):
    Select(page.find_element(By.ID, "target-a")).select_by_value("sift:sift-bow")
    page.find_element(By.ID, "tab-eval").click()
    WebDriverWait(page, 120).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#eval-table tbody tr")) == 60)
    assert not page.find_element(By.ID, "search-view").is_displayed()
    def column_a():
        return [float(r.text) for r in page.find_elements(By.CSS_SELECTOR, "#eval-table tbody td:nth-child(2)")]
    ascending = column_a()  # sorted by A's score, worst first: the queries to look at
    assert ascending == sorted(ascending) and ascending[0] < ascending[-1]
    assert not page.find_element(By.CSS_SELECTOR, '#eval-table th[data-key="b"]').is_displayed()  # no comparison
    page.find_element(By.CSS_SELECTOR, '#eval-table th[data-key="a"]').click()
    assert column_a() == sorted(ascending, reverse=True)
    row = page.find_elements(By.CSS_SELECTOR, "#eval-table tbody tr")[0]
    name, before = row.get_attribute("data-name"), searches_done(page)
    row.click()
    wait_for_search(page, before)
    assert page.find_element(By.ID, "search-view").is_displayed() and result_names(page)[0] == name


def test_a_second_upload_of_the_same_file_name_shows_the_new_image(page, ukbench_root, tmp_path):
    more = page.find_element(By.CSS_SELECTOR, "#column-a .more")
    assert not more.is_displayed()  # nothing to page through before a search
    for folder, image in (("a", "ukbench00001.jpg"), ("b", "ukbench00030.jpg")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "photo.jpg").write_bytes(open(os.path.join(ukbench_root, image), "rb").read())
        upload(page, str(tmp_path / folder / "photo.jpg"))
        query_id = page.execute_script("return state.query.id")
        WebDriverWait(page, 30).until(lambda d: query_id in d.find_element(By.ID, "query-image").get_attribute("src"))
        assert result_names(page)[0] == image
    assert more.is_displayed() and len(result_names(page)) == 24  # 24 of 60 shown
