"""The search page in a real headless browser (Chromium from the system's packages, driven by selenium
through the system's chromedriver: nothing is downloaded), the JSON endpoint, path-traversal refusals,
video serving with ranges, and tools.search's terminal and HTML output."""
import contextlib
import http.client
import io
import json
import os
import shutil
import threading

import pytest

from tests.tools_fixtures import make_toy, save_checkpoint

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from tools.index import build_index
    from tools.search import Searcher
    from tools.serve import make_server

    root = tmp_path_factory.mktemp("serve")
    toy = make_toy(root / "toy")
    checkpoint = save_checkpoint(toy, root / "model" / "model_final.pt")
    build_index(checkpoint, [toy / "videos"], root / "idx", workers=0, batch_size=6, chunk=6, progress=False)
    searcher = Searcher(root / "idx")
    server = make_server(searcher, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield searcher, server.server_address[1], root
    server.shutdown()
    server.server_close()


def get(port, path, headers=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", path, headers=headers or {})  # the path is sent as written, '..' included
    response = connection.getresponse()
    return response.status, response.read(), dict(response.getheaders())


def test_typing_a_query_in_a_headless_browser_shows_the_expected_first_result(served, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    assert CHROMIUM and CHROMEDRIVER, "apt-get install chromium chromium-driver (see .ci/run)"
    searcher, port, _ = served
    query = "a yellow triangle slides to the left"
    expected = [h.entry.path for h in searcher.search([query], 8)[0]]
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1100,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        box = driver.find_element(By.ID, "q")
        box.send_keys(query, Keys.ENTER)
        WebDriverWait(driver, 20).until(
            lambda d: d.find_element(By.ID, "results").get_attribute("data-state") == "done")
        hits = driver.find_elements(By.CSS_SELECTOR, "#results .hit")
        assert [h.get_attribute("data-path") for h in hits] == expected
        assert hits[0].get_attribute("data-rank") == "1"
        WebDriverWait(driver, 20).until(lambda d: d.execute_script(
            "return [...document.images].every(i => i.complete && i.naturalWidth > 0)"))
        hits[0].find_element(By.TAG_NAME, "img").click()  # a click plays the clip
        WebDriverWait(driver, 20).until(lambda d: d.execute_script(
            "const v = document.querySelector('#results video'); return v && v.readyState >= 2"))
        shot = tmp_path / "search.png"
        driver.save_screenshot(str(shot))
    finally:
        driver.quit()
    from PIL import Image

    width, height = Image.open(shot).size  # the viewport: the window less its (headless) frame
    assert width == 1100 and 600 < height <= 900
    if os.environ.get("UNIVTR_KEEP_SCREENSHOT"):  # to look at it: UNIVTR_KEEP_SCREENSHOT=/tmp/page.png
        shutil.copy(shot, os.environ["UNIVTR_KEEP_SCREENSHOT"])


def test_only_indexed_files_are_served(served, tmp_path):
    searcher, port, root = served
    secret = root / "secret.txt"
    secret.write_text("do not serve me")
    entry = searcher.entries[0]
    for path in (f"/video/../{secret.relative_to(root)}", "/video/../../../../etc/passwd", f"/video/{secret}",
                 f"/video/%2e%2e%2f{secret.name}", f"/{secret}", "//etc/passwd", f"/thumb/../{secret.name}",
                 "/video/99999", f"/thumb/{entry.id}", f"/video/{entry.id}.jpg", "/index.json", "/../index.json",
                 f"/video/{entry.path}", "/api/search?q=&k=3", "/api/search?q=dog&k=1000"):
        status, body, _ = get(port, path)
        assert status >= 400, path
        assert b"do not serve me" not in body and b"root:" not in body, path
    status, body, _ = get(port, f"/video/{entry.id}")
    assert status == 200 and body == open(entry.path, "rb").read()
    status, body, headers = get(port, f"/video/{entry.id}", {"Range": "bytes=10-19"})
    assert status == 206 and body == open(entry.path, "rb").read()[10:20]
    assert headers["Content-Range"].startswith("bytes 10-19/")
    status, body, _ = get(port, f"/thumb/{entry.id}.jpg")
    assert status == 200 and body[:2] == b"\xff\xd8"


def test_the_json_endpoint_matches_the_searcher(served):
    searcher, port, _ = served
    status, body, _ = get(port, "/api/search?q=a%20red%20cross%20falls&k=3")
    data = json.loads(body)
    assert status == 200 and data["query"] == "a red cross falls"
    expected = searcher.search(["a red cross falls"], 3)[0]
    assert [r["path"] for r in data["results"]] == [h.entry.path for h in expected]
    assert [r["rank"] for r in data["results"]] == [1, 2, 3]
    assert all(r["video"] == f"/video/{r['id']}" for r in data["results"])


def test_search_prints_ranked_paths_and_writes_a_page_with_frame_strips(served, tmp_path):
    from tools.search import main

    searcher, _, root = served
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([str(root / "idx"), "a blue circle", "a purple square", "--topk", "4", "--html",
                     str(tmp_path / "out.html")]) == 0
    lines = [line.split() for line in out.getvalue().splitlines() if line.startswith("    ")]
    expected = [h for hits in searcher.search(["a blue circle", "a purple square"], 4) for h in hits]
    assert [(int(r), p) for r, _, p in lines] == [(h.rank, h.entry.path) for h in expected]
    page = (tmp_path / "out.html").read_text()
    assert page.count('class="hit"') == 8 and page.count("data:image/jpeg;base64,") == 8
    assert all(h.entry.path in page for h in expected)
