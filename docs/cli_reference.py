"""MkDocs hook: the command-line reference page is the parsers' own help, generated at build time, so it
never drifts from what `whetstone --help` says."""

from __future__ import annotations

import argparse

MARKER = "<!-- whetstone-cli -->"


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 - MkDocs' hook signature
    if MARKER not in markdown:
        return markdown
    from whetstone.cli.main import make_parser

    parser = make_parser()
    parts = ["```text", parser.format_help().rstrip(), "```"]
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    for name, sub in commands.choices.items():
        parts += [f"## whetstone {name}", "", "```text", sub.format_help().rstrip(), "```", ""]
    return markdown.replace(MARKER, "\n".join(parts))
