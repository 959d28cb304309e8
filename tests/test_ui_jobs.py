"""The page's jobs (#39 items 11, 15): each run is a child process that Stop ends (no zombie computing
beside the next run, no folder left behind), and the page runs only the models it offers."""
import glob
import os
import threading
import time

import pytest

pytest.importorskip("gradio")
from windowguide.errors import WindowguideError  # noqa: E402
from windowguide.ui import runs  # noqa: E402


def test_stop_ends_the_running_job_and_its_folder(tmp_path):
    seen, outcome = [], {}

    def job():
        try:
            runs.sample("mirror", "mswg:w=1,window=16", "0-63", 200, "heun", root=str(tmp_path),
                        progress=lambda f, what: seen.append(f))
        except WindowguideError as e:
            outcome["error"] = str(e)
    t = threading.Thread(target=job, daemon=True)
    t.start()
    deadline = time.time() + 120
    while not seen and time.time() < deadline:      # the child reports its first progress line
        time.sleep(0.2)
    assert seen, "no progress was reported"
    pids = [p.pid for p in runs._ACTIVE]
    assert runs.stop() == 1
    t.join(30)
    assert outcome.get("error") == "stopped" and not runs._ACTIVE
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert glob.glob(str(tmp_path / "wg-ui-*")) == []


def test_a_failed_run_says_the_clis_message():
    with pytest.raises(WindowguideError, match="--steps 0: accepted"):
        runs.sample("mirror", "none", "0", 0, "heun")


def test_the_page_runs_only_the_models_it_offers(tmp_path):
    import gradio as gr
    from windowguide.ui.app import build
    app = build(["mirror"], str(tmp_path))
    dropdowns = [b for b in app.blocks.values() if isinstance(b, gr.Dropdown) and b.label == "model"]
    assert dropdowns and not any(d.allow_custom_value for d in dropdowns)
    handlers = [f.fn for f in app.fns.values() if getattr(f.fn, "__name__", "") == "call"]
    assert handlers
    for fn in handlers:
        with pytest.raises(gr.Error, match="model '/etc' is not offered here"):
            fn("/etc", "", "", "0", 2, "heun", *([None] * 40))
