"""The documentation site builds in strict mode (a broken link, page or API reference fails it), and every
tutorial's code runs as written, in order, as a reader would paste it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_readme import _blocks

from conftest import torch_threads

ROOT = Path(__file__).parents[1]
PAGES = ["getting-started.md", "tutorials/convert.md", "tutorials/deploy.md", "tutorials/time.md"]


def test_the_site_builds_in_strict_mode(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[docs]')")
    pytest.importorskip(
        "mkdocstrings_handlers.python", reason="mkdocstrings-python is not installed (pip install -e '.[docs]')"
    )
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    import whetstone as ws

    missing = [name for name in ws.__all__ if f'id="whetstone.{name}"' not in api]
    assert not missing, f"the API reference lacks {missing}"
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    assert "whetstone simulate" in cli and "--plot" in cli  # generated from the parsers


@pytest.mark.parametrize("page", PAGES)
def test_each_tutorial_runs_as_written(page, tmp_path, monkeypatch, capsys):
    if page == "tutorials/deploy.md":
        pytest.importorskip("snntorch", reason="consumer 'snntorch' is not installed (pip install snntorch)")
    blocks = _blocks(ROOT / "docs" / page, "python")
    assert blocks
    monkeypatch.chdir(tmp_path)  # the pages write runs/... where they run
    namespace: dict = {}
    with torch_threads(1):
        for block in blocks:
            exec(compile(block, page, "exec"), namespace)  # noqa: S102 - our own pages
    printed = capsys.readouterr().out
    assert printed.strip(), page
    if page != "tutorials/deploy.md":
        assert "True" in printed or "steps per image" in printed, printed
