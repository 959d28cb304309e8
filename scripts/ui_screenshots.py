"""Screenshots of each tab of ``windowguide ui`` into docs/ (ui_compare.png, ui_sweep.png, ui_panorama.png),
by the browser test's own code path (tests/ui_browser.py): python scripts/ui_screenshots.py"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
import ui_browser as ub  # noqa: E402

if __name__ == "__main__":
    why = ub.missing()
    if why:
        sys.exit(f"ui_screenshots: {why}")
    with ub.server("/tmp/windowguide_ui_server.log") as url, ub.browser() as d:
        for path in ub.every_tab(d, url, os.path.join(ROOT, "docs")):
            print(path)
