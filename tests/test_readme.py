"""The README's Python examples run as written, each alone in a fresh interpreter."""
import os
import re
import subprocess
import sys

import pytest

README = os.path.join(os.path.dirname(__file__), "..", "README.md")
BLOCKS = re.findall(r"```python\n(.*?)```", open(README, encoding="utf-8").read(), flags=re.S)


def test_the_readme_has_python_examples():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs_alone(index, tmp_path):
    p = subprocess.run([sys.executable, "-c", BLOCKS[index]], cwd=tmp_path, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, f"README block {index + 1} failed:\n{BLOCKS[index]}\n{p.stderr[-2000:]}"
    # every example ends by saving its result (#38 item 5): a PNG appears in the folder it runs in
    pngs = [n for n in os.listdir(tmp_path) if n.endswith(".png")]
    assert pngs and all(os.path.getsize(tmp_path / n) > 100 for n in pngs), (BLOCKS[index], os.listdir(tmp_path))

