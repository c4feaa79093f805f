"""``camkit serve`` in a real browser: Debian's headless Chromium driven by selenium.

Starts the server on a free localhost port, uploads a photo, clicks another class and
another method and sees the map change, opens the Browse tab on a small explain-dataset run
and sorts it by a metric. Every resource the page loads comes from the server (offline).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

pytest.importorskip("gradio")

from camkit.data import quokka  # noqa: E402
from camkit.explorer.app import build_app, launch  # noqa: E402
from camkit.explorer.browse import Browser, open_browser  # noqa: E402
from camkit.explorer.explorer import Explorer  # noqa: E402
from tests.viz.report.test_browser import (  # noqa: E402, F401
    SCREENSHOTS,
    browser,
    console_errors,
)

SCREENSHOT = SCREENSHOTS / "serve-screenshot.png"
WAIT_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server(NamedTuple):
    url: str
    browser: Browser  # what the Browse tab shows, to compare with


@pytest.fixture(scope="module")
def server(small_run, lite, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    out = tmp_path_factory.mktemp("serve-out")
    rows = open_browser(small_run.results, small_run.evaluation, lite)
    app = build_app(Explorer(lite, out, top_k=3), rows)
    url = launch(app, out, port=free_port(), block=False)
    try:
        yield Server(url, rows)
    finally:
        app.close()


def wait_for(driver: Any, script: str, *args: Any) -> Any:
    """The first truthy value of ``script`` (polled), or a timeout failure naming it."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.2).until(
        lambda d: d.execute_script(script, *args), message=script)


MAP_SRC = "const i = document.querySelector('#picture img'); return i && i.src;"
CAPTIONS = "Array.from(document.querySelectorAll('#gallery img')).map(i => i.alt)"
CHANGED = MAP_SRC.replace("return i && i.src;", "return i && i.src !== arguments[0] && i.src;")


def choose(driver: Any, dropdown: str, option: str) -> None:
    """Pick ``option`` in the Gradio drop-down with element id ``dropdown``."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, f"#{dropdown} input").click()
    item = wait_for(driver, "return document.querySelector("
                    "`li[role=option][aria-label='${arguments[0]}']`);", option)
    item.click()


def test_explain_then_browse(browser: Any, server: Server, tmp_path: Path) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By

    photo = tmp_path / "quokka.png"
    quokka().image.save(photo)
    browser.set_window_size(1280, 1000)
    browser.get(server.url)
    wait_for(browser, "return document.querySelector('#upload input[type=file]')")
    browser.get_log("browser")
    browser.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(photo))
    first = wait_for(browser, MAP_SRC)
    labels = wait_for(browser, "const l = document.querySelectorAll('#classes label');"
                      "return l.length === 3 && Array.from(l);")
    assert "gradcam" in browser.find_element(By.ID, "message").text

    labels[1].click()  # another class: its map from the cache
    second = wait_for(browser, CHANGED, first)
    wait_for(browser, "return document.querySelector('#message').innerText.includes("
             "arguments[0])", labels[1].text.split(" (")[0])

    choose(browser, "method", "hirescam")  # another method of the same pass
    wait_for(browser, CHANGED, second)
    wait_for(browser, "return document.querySelector('#message').innerText"
             ".startsWith('hirescam')")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOT))

    tab = [t for t in browser.find_elements(By.CSS_SELECTOR, "button[role=tab]")
           if t.text == "Browse"]
    tab[0].click()
    captions = wait_for(browser, "const c = document.querySelectorAll('#gallery img');"
                        "return c.length === 24 && Array.from(c).map(i => i.alt || '');")
    assert len(captions) == 24
    before = captions
    choose(browser, "sort", "increase-in-confidence")
    expected = [r.caption for r in server.browser.query("increase-in-confidence").rows]
    assert expected != before
    wait_for(browser, f"return JSON.stringify({CAPTIONS}) === arguments[0]",
             json.dumps(expected, ensure_ascii=False, separators=(",", ":")))
    values = [float(c.split("increase-in-confidence ")[1]) for c in expected
              if "increase-in-confidence" in c]
    assert len(values) == 12 and values == sorted(values)  # worst (lowest) first
    assert "page 1 of 1" in browser.find_element(By.ID, "browse-info").text
    browser.find_element(By.CSS_SELECTOR, "#gallery button.thumbnail-item").click()
    side = wait_for(browser, "const c = Array.from(document.querySelectorAll('#side img'))"
                    ".map(i => i.alt); return c.length === 2 && c;")
    assert side == ["gradcam", "layercam"]  # every method of the first image, side by side
    assert console_errors(browser) == []
    resources = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    outside = [r for r in resources if not r.startswith(server.url.rstrip("/"))]
    assert resources and outside == []
