"""Drive ``windowguide ui`` in headless Chromium (Selenium): start the server on a free port of 127.0.0.1,
open the page, fill fields, click, read images and messages, take screenshots, stop the server. Used by
tests/test_ui_browser.py and by scripts/ui_screenshots.py (the screenshots in docs/)."""
from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager

import numpy as np

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def missing() -> str | None:
    """Why the browser test cannot run here, or None."""
    try:
        import gradio  # noqa: F401
        import selenium  # noqa: F401
    except ImportError as e:
        return f"needs gradio and selenium ({e})"
    if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
        return "needs Chromium and ChromeDriver (Debian: apt-get install chromium chromium-driver)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(log_path: str):
    """``windowguide ui`` on a free port; yields its address; stopped on exit."""
    port = free_port()
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "windowguide", "ui", "--port", str(port)], stdout=log,
                            stderr=subprocess.STDOUT, env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(240):
            if proc.poll() is not None:
                raise RuntimeError(f"windowguide ui exited: {open(log_path).read()[-2000:]}")
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            raise RuntimeError("windowguide ui did not answer in 120 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@contextmanager
def browser(width: int = 1500, height: int = 1800):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    o = webdriver.ChromeOptions()
    o.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              f"--window-size={width},{height}"):
        o.add_argument(a)
    d = webdriver.Chrome(service=Service(DRIVER), options=o)
    try:
        yield d
    finally:
        d.quit()


def wait(d, condition, timeout: float = 180):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(d, timeout, poll_frequency=0.3).until(condition)


def by_css(d, css: str):
    from selenium.webdriver.common.by import By
    return d.find_elements(By.CSS_SELECTOR, css)


def fill(d, elem_id: str, value) -> None:
    """Type ``value`` into the field of a Gradio component (Textbox / Number) and leave it."""
    from selenium.webdriver.common.keys import Keys
    field = by_css(d, f"#{elem_id} input, #{elem_id} textarea")[0]
    field.click()
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(str(value))
    field.send_keys(Keys.TAB)


def tab(d, name: str) -> None:
    """Open the tab whose button reads ``name``."""
    from selenium.webdriver.common.by import By
    buttons = [b for b in d.find_elements(By.CSS_SELECTOR, "button[role='tab']") if b.text.strip() == name]
    buttons[0].click()
    time.sleep(0.5)


def images(d, elem_id: str) -> list[np.ndarray]:
    """The images a Gallery shows, fetched from the server and decoded (PNG, lossless)."""
    from PIL import Image
    out = []
    for img in by_css(d, f"#{elem_id} .grid-wrap img, #{elem_id} .thumbnails img"):
        src = img.get_attribute("src")
        with urllib.request.urlopen(src) as r:
            out.append(np.asarray(Image.open(io.BytesIO(r.read())).convert("RGB")))
    return out


def gallery_count(d, elem_id: str) -> int:
    return len(by_css(d, f"#{elem_id} .grid-wrap img"))


def screenshot(d, path: str) -> str:
    """The whole page (the window resized to the document's height) as a PNG."""
    h = d.execute_script("return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)")
    w = d.get_window_size()["width"]
    d.set_window_size(w, min(int(h) + 100, 6000))
    time.sleep(0.5)
    d.save_screenshot(path)
    return path


def run_compare(d, url: str, seeds: str = "0-1", steps: int = 6, weight: float = 0.7) -> dict:
    """Compare tab: seeds, steps and recipe 2's M-SWG weight set, Run clicked, the two columns' images read."""
    d.get(url)
    wait(d, lambda d: by_css(d, "#compare-run"))
    fill(d, "compare-seeds", seeds)
    fill(d, "compare-steps", steps)
    fill(d, "compare-w-1", weight)
    by_css(d, "#compare-run")[0].click()
    n = len(seeds.split("-")) if "-" not in seeds else int(seeds.split("-")[1]) - int(seeds.split("-")[0]) + 1
    wait(d, lambda d: gallery_count(d, "compare-out-0") == n and gallery_count(d, "compare-out-1") == n)
    return dict(none=images(d, "compare-out-0"), mswg=images(d, "compare-out-1"),
                command=by_css(d, "#compare-command")[0].text)


def run_sweep(d, weights: str = "0,0.5,1,2", steps: int = 6) -> None:
    tab(d, "Sweep")
    fill(d, "sweep-seeds", "0")
    fill(d, "sweep-steps", steps)
    fill(d, "sweep-weights", weights)
    by_css(d, "#sweep-run")[0].click()
    wait(d, lambda d: gallery_count(d, "sweep-out") == len(weights.split(",")))


def run_panorama(d, steps: int = 8) -> None:
    tab(d, "Panorama")
    fill(d, "panorama-seeds", "0-1")
    fill(d, "panorama-steps", steps)
    by_css(d, "#panorama-run")[0].click()
    wait(d, lambda d: gallery_count(d, "panorama-out") == 2)


def every_tab(d, url: str, folder: str, compared: dict | None = None) -> list[str]:
    """Each tab run on the bundled models and screenshotted into ``folder``: ui_compare.png, ui_sweep.png,
    ui_panorama.png (the README's screenshots come from here); the compare tab's result (``run_compare``'s
    defaults) goes into ``compared`` when given."""
    os.makedirs(folder, exist_ok=True)
    got = run_compare(d, url)
    if compared is not None:
        compared.update(got)
    shots = [screenshot(d, os.path.join(folder, "ui_compare.png"))]
    d.set_window_size(1500, 1800)
    run_sweep(d)
    shots.append(screenshot(d, os.path.join(folder, "ui_sweep.png")))
    d.set_window_size(1500, 1800)
    run_panorama(d)
    shots.append(screenshot(d, os.path.join(folder, "ui_panorama.png")))
    return shots


def page_text(d) -> str:
    from selenium.webdriver.common.by import By
    return d.find_element(By.TAG_NAME, "body").text
