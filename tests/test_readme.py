"""The README's code runs as written, and every `whetstone` command in the README and docs/results.md is
one the command line accepts (parsed, not run: many train for hours on full datasets or a GPU)."""

import re
import shlex
from pathlib import Path

import pytest

from whetstone.cli.main import make_parser

from conftest import torch_threads

ROOT = Path(__file__).parents[1]


def _blocks(path: Path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", path.read_text(), flags=re.DOTALL)


def test_readme_python_runs_as_written(tmp_path, monkeypatch, capsys):
    blocks = _blocks(ROOT / "README.md", "python")
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)  # the snippets write runs/... where they are run
    namespace: dict = {}
    with torch_threads(1):
        for block in blocks:  # in order, in one namespace: later snippets use what earlier ones made
            exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - the README is ours
    printed = capsys.readouterr().out
    assert "synaptic events per image" in printed and "True" in printed  # the run ended fully binary
    assert (tmp_path / "runs" / "readme" / "best.pt").exists()


def _commands(path: Path) -> list[list[str]]:
    commands = []
    for block in _blocks(path, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("whetstone "):
                line = re.sub(r"\$\{?\w+\}?", "1", line)  # shell variables ($SEED, $OUT) stand for numbers or folders
                commands.append(shlex.split(line)[1:])
    return commands


@pytest.mark.parametrize(
    "document",
    [
        "README.md",
        "docs/results.md",
        "docs/deploy.md",
        "docs/getting-started.md",
        "docs/tutorials/deploy.md",
        "docs/tutorials/time.md",
    ],
)
def test_documented_commands_are_accepted(document, capsys):
    commands = _commands(ROOT / document)
    assert commands
    parser = make_parser()
    for argv in commands:
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{document}: `whetstone {' '.join(argv)}` is refused: {capsys.readouterr().err.strip()}")


@pytest.mark.parametrize(
    "script,args,expected",
    [
        (
            "plain_loop.py",
            ["--epochs", "0"],
            "plain_loop.py: error: argument --epochs: must be a finite integer >= 1, got 0",
        ),
        (
            "random_walk.py",
            ["--walkers", "0"],
            "random_walk.py: error: argument --walkers: must be a finite integer >= 1",
        ),
        (
            "segmentation.py",
            ["--data-dir", "{tmp}"],
            "segmentation.py: error: mnist train data not found: looked for {tmp}",
        ),
        ("convert_your_model.py", ["--data-dir", "{tmp}"], "convert_your_model.py: error: mnist train data not found"),
    ],
)
def test_examples_say_what_is_wrong_in_one_line(script, args, expected, tmp_path):
    """The examples are run as people run commands: a bad value or missing data is one line, exit status 2."""
    import subprocess
    import sys

    argv = [arg.format(tmp=tmp_path) for arg in args]
    done = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "examples" / script), *argv],
                          check=False, capture_output=True, text=True, timeout=120, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert expected.format(tmp=tmp_path) in done.stderr
