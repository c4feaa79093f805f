"""The HTML report in a real browser: Debian's headless Chromium driven by selenium.

Not skipped when Chromium is missing: it fails and says how to install it (``make test``
installs it). Nothing is downloaded: selenium gets the system chromedriver's path.
"""

from __future__ import annotations

import base64
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import camkit
from camkit.data import imagenet_samples, load_image, quokka
from camkit.targets import TopK
from camkit.viz.report import ReportItem, TargetRow, report_items, write_report
from camkit.zoo import load_model

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
INSTALL = ("apt-get update && apt-get install -y chromium chromium-driver && "
           ".venv/bin/python -m pip install selenium")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync",
         "--hide-scrollbars", "--force-device-scale-factor=1")
# The screenshots in docs/ are refreshed with CAMKIT_SCREENSHOTS=docs; a plain test run writes
# them to the temporary folder, leaving the checkout as it was.
SCREENSHOTS = Path(os.environ.get("CAMKIT_SCREENSHOTS", tempfile.gettempdir()))
SCREENSHOT = SCREENSHOTS / "report-screenshot.png"
METHODS = ("gradcam", "gradcam++", "layercam")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(f"the report's browser test needs {' and '.join(missing)}; install them "
                    f"with: {INSTALL}  (make test does this)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ModuleNotFoundError:
        pytest.fail(f"the report's browser test needs selenium; install it with: {INSTALL}")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def open_page(driver: Any, path: Path, width: int = 1280, height: int = 900) -> None:
    driver.set_window_size(width, height)
    driver.get(path.resolve().as_uri())
    driver.get_log("browser")  # start each page with an empty console
    driver.refresh()


def console_errors(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def broken_images(driver: Any) -> tuple[int, list[str]]:
    """How many images the page has, and the alt texts of those that did not decode."""
    return tuple(driver.execute_script(
        "const all = Array.from(document.images);"
        "return [all.length, all.filter(i => !(i.complete && i.naturalWidth > 0))"
        ".map(i => i.alt)];"))


def layout_faults(driver: Any) -> list[str]:
    """Elements sticking out of the window and captions overflowing their panel."""
    return driver.execute_script("""
        const width = document.documentElement.clientWidth, faults = [];
        if (document.documentElement.scrollWidth > width + 1) faults.push('page scrolls sideways');
        for (const e of document.querySelectorAll('.card, .panel, .side, h2, h3, nav a')) {
          const r = e.getBoundingClientRect();
          if (r.width && (r.left < -1 || r.right > width + 1)) {
            faults.push('outside: ' + e.className);
          }
        }
        for (const e of document.querySelectorAll('figcaption, .preds li, h3')) {
          if (e.scrollWidth > e.clientWidth + 1) faults.push('overflows: ' + e.textContent);
        }
        return faults;""")


def shown_in_first_panel(driver: Any) -> dict[str, str]:
    """The element on top at the centre of the first panel's picture."""
    return driver.execute_script("""
        const stack = document.querySelector('.panel .stack');
        stack.scrollIntoView({block: 'center'});
        const r = stack.getBoundingClientRect();
        const top = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
        return {cls: top.className, src: top.src || ''};""")


@pytest.fixture(scope="module")
def real_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two real photos explained by the pretrained EfficientNet-Lite0, top-2 classes, with
    each method's measured time per image as the metrics table."""
    loaded = load_model()
    photos = [("quokka.png", quokka().image)]
    photos += [(s.path.name, load_image(s.path)) for s in imagenet_samples()[3:4]]
    x = torch.stack([loaded.preprocess(img) for _, img in photos])
    expl = camkit.explain(loaded.model, x, TopK(2), METHODS, loaded.layer)  # also warms up
    timings = {}
    for method in METHODS:
        start = time.perf_counter()
        camkit.explain(loaded.model, x, TopK(2), method, loaded.layer)
        timings[method] = {"time per image (s)": (time.perf_counter() - start) / len(photos)}
    items = report_items(expl, [loaded.preprocess.view(img) for _, img in photos],
                         loaded.class_names, names=[name for name, _ in photos])
    settings = {"model": loaded.arch, "layer": expl.layer, "methods": METHODS,
                "targets": "top 2 classes"}
    return write_report(tmp_path_factory.mktemp("real") / "report.html", items, settings,
                        timings)


def test_real_report_in_chromium(browser: Any, real_report: Path) -> None:
    open_page(browser, real_report, 1280, 1500)
    count, broken = broken_images(browser)
    assert count == 2 + 2 * 2 * 3 * 2 + 1  # inputs, (overlay map + raw map) per panel, scale
    assert broken == []
    assert browser.execute_script("return document.querySelectorAll("
                                  "'#metrics table tbody tr').length") == len(METHODS)
    assert layout_faults(browser) == []
    SCREENSHOT.parent.mkdir(exist_ok=True)
    browser.execute_script("window.scrollTo(0, 0)")
    assert browser.save_screenshot(str(SCREENSHOT))
    assert console_errors(browser) == []
    browser.execute_script("console.error('probe')")  # the console check can see errors
    assert any("probe" in m for m in console_errors(browser))


def test_toggle_switches_every_panel_between_overlay_and_raw_map(browser, real_report) -> None:
    from selenium.webdriver.common.by import By

    open_page(browser, real_report)
    toggle = browser.find_element(By.ID, "view-toggle")
    before = shown_in_first_panel(browser)
    assert before["cls"] == "heat" and before["src"].startswith("data:image/png")
    toggle.click()
    after = shown_in_first_panel(browser)
    assert after["cls"] == "raw" and after["src"] != before["src"]
    assert toggle.get_attribute("aria-pressed") == "true"
    visible = browser.execute_script(
        "return Array.from(document.querySelectorAll('.panel img'))"
        ".filter(i => i.offsetParent !== null).map(i => i.className)")
    assert visible == ["raw"] * 12
    toggle.click()
    assert shown_in_first_panel(browser) == before
    assert console_errors(browser) == []


def test_opacity_slider_sets_the_overlay_opacity(browser, real_report) -> None:
    open_page(browser, real_report)
    opacity = browser.execute_script("""
        const slider = document.querySelector('input[data-var="--alpha"]');
        const heat = document.querySelector('.heat');
        const before = getComputedStyle(heat).opacity;
        slider.value = '0.8';
        slider.dispatchEvent(new Event('input'));
        return [before, getComputedStyle(heat).opacity];""")
    assert opacity == ["0.5", "0.8"]


def test_print_layout(browser, real_report) -> None:
    open_page(browser, real_report, 794, 1100)  # A4 at 96 dpi
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
    try:
        hidden = browser.execute_script(
            "return getComputedStyle(document.querySelector('.controls')).display")
        assert hidden == "none"
        assert layout_faults(browser) == []
    finally:
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": ""})
    pdf = base64.b64decode(browser.print_page())
    assert pdf.startswith(b"%PDF")


@pytest.fixture(scope="module")
def crowded_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """50 images × 15 methods, long class and method names, metrics for every method."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, 24)
    methods = [f"method-{i:02d}" for i in range(14)] + ["a-method-with-a-really-long-name"]
    label = "a class name that goes on " * 6 + "and_a_word_without_spaces" * 5
    items = [ReportItem(
        name=f"image_{i:02d}_with_a_long_file_name_from_a_camera_roll.jpg",
        image=rng.integers(0, 256, (24, 24, 3), dtype=np.uint8),
        targets=[TargetRow(label + str(i), 1.0, 0.5)],
        maps={m: np.broadcast_to(np.abs(ramp - rng.random())[:, None], (1, 24, 24))
              for m in methods},
        predictions=[(label, 0.9), ("short", 0.1)],
    ) for i in range(50)]
    metrics = {m: {f"metric {j} with a long heading": (0.5, 0.4, 0.6) for j in range(6)}
               for m in methods}
    return write_report(tmp_path_factory.mktemp("crowded") / "report.html", items,
                        {"model": "fake"}, metrics)


@pytest.mark.parametrize("width", [1280, 600])
def test_crowded_report_keeps_its_layout(browser, crowded_report, width: int) -> None:
    open_page(browser, crowded_report, width, 900)
    count, broken = broken_images(browser)
    assert count == 50 * 15 * 2 + 50 + 1 and broken == []
    faults = layout_faults(browser)
    # The metrics table scrolls inside its card on a narrow window; nothing else may stick out.
    assert faults == [], faults[:5]
    assert console_errors(browser) == []
