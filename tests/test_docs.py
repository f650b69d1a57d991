"""README.md and docs/*.md: the README fits on a page, every relative link lands, every command shown parses.

A command line counts when `mnist-mlp` stands where a shell would run it: at the start of a line of a code
block (after `$ `, environment assignments or a `time`), or at the start of inline code. Its arguments go
through `mnist_mlp.cli.build_parser()`, so a renamed flag or subcommand fails here before a reader meets it.
Usage synopses are read as such: `[--out DIR]` is an optional part, `IMAGE...` a repeated one,
`last|best` alternatives (each is checked).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import re
import shlex
from pathlib import Path

import pytest

from mnist_mlp.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
README_LIMIT = 10_000  # characters: the way in fits on a page
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_SOURCE = re.compile(r"<(?:img|a)\b[^>]*?\b(?:src|href)=\"([^\"]+)\"", re.I)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
ENVIRONMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
WRAPPERS = {"$", "time", "/usr/bin/time", "-v", "nice", "exec"}
SHELL_OPERATORS = re.compile(r"^(\||\|\||&&|;|&|\d?>.*|<.*)$")
PLACEHOLDERS = {"N": "1"}  # an integer option's placeholder


def code_blocks(text: str) -> list[str]:
    return FENCE.findall(text)


def prose(text: str) -> str:
    """The text without its code blocks."""
    return FENCE.sub("", text)


def inline_code(text: str) -> list[str]:
    return [m.group(2).strip() for m in INLINE_CODE.finditer(prose(text))]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = INLINE_CODE.sub(lambda m: m.group(2), heading).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(prose(text)):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def broken_links(page: Path, text: str) -> list[str]:
    """Each relative link or image in `text` (the page at `page`) whose file or heading does not exist."""
    text_without_code = INLINE_CODE.sub("", prose(text))
    targets = LINK.findall(text_without_code) + HTML_SOURCE.findall(text_without_code)
    problems = []
    for target in targets:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            problems.append(f"{page.name}: {target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text(encoding="utf-8")):
            problems.append(f"{page.name}: {target}: no heading with that anchor in {file.name}")
    return problems


def command_lines(text: str) -> list[str]:
    """The `mnist-mlp ...` command lines shown in `text`: code-block lines and inline code."""
    lines = [line for block in code_blocks(text) for line in block.splitlines()]
    return [line.strip() for line in lines + inline_code(text) if "mnist-mlp" in line or "-m mnist_mlp" in line]


def arguments(line: str) -> list[str] | None:
    """The words after `mnist-mlp` when the line runs it (None when it only mentions it)."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        words = line.split()
    for i, word in enumerate(words):
        if word.rsplit("/", 1)[-1] == "mnist-mlp":
            start = i + 1
        elif word == "-m" and words[i + 1 : i + 2] == ["mnist_mlp"] and i > 0 and "python" in words[i - 1]:
            start = i + 2
        elif ENVIRONMENT.match(word) or word in WRAPPERS or "python" in word:
            continue
        else:
            return None
        rest = list(itertools.takewhile(lambda w: not SHELL_OPERATORS.match(w), words[start:]))
        return rest or None  # the bare name is a mention, not a command
    return None


def variants(words: list[str]) -> list[list[str]]:
    """A synopsis as the command lines it stands for: brackets and `...` dropped, `a|b` each way."""
    cleaned = []
    for word in words:
        word = word.replace("[", "").replace("]", "").removesuffix("...").removesuffix("…")
        if word:
            cleaned.append([PLACEHOLDERS.get(w, w) for w in word.split("|")])
    return [list(choice) for choice in itertools.product(*cleaned)]


def rejection(args: list[str]) -> str | None:
    """argparse's complaint about `mnist-mlp ARGS`, or None when it accepts them."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(args)
    except SystemExit as exc:
        if exc.code:
            return err.getvalue().strip().splitlines()[-1]
    return None


def subcommands() -> set[str]:
    return set(build_parser()._subparsers._group_actions[0].choices)


def rejected_commands(text: str) -> list[str]:
    problems = []
    for line in command_lines(text):
        words = arguments(line)
        for args in variants(words) if words else []:
            if not args or args in ([name] for name in subcommands()):  # `mnist-mlp serve` in prose: a name
                continue
            reason = rejection(args)
            if reason:
                problems.append(f"{line!r}: {reason}")
    return problems


def test_readme_fits_on_a_page():
    size = len((ROOT / "README.md").read_text(encoding="utf-8"))
    assert size <= README_LIMIT, (
        f"README.md has {size:,} characters; the limit is {README_LIMIT:,}: move detail to docs/"
    )


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_and_images_exist(page):
    assert broken_links(page, page.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_commands_shown_parse(page):
    assert rejected_commands(page.read_text(encoding="utf-8")) == []


def test_every_subcommand_is_shown_and_checked():
    """The check reads real command lines: every subcommand appears in the docs in a form it parsed."""
    shown = set()
    for page in PAGES:
        for line in command_lines(page.read_text(encoding="utf-8")):
            words = arguments(line)
            if words:
                shown.add(words[0])
    assert subcommands() <= shown


def test_the_checks_catch_what_they_are_for(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("# A heading\n")
    (tmp_path / "img.png").write_bytes(b"")
    text = (
        "[ok](there.md) [ok](there.md#a-heading) ![ok](img.png) [web](https://example.org/x)\n"
        "[gone](missing.md) ![gone](nothing.png) [no anchor](there.md#nowhere) `[code](not-a-link.md)`\n"
        "Run `mnist-mlp train --nope` or `mnist-mlp evaluate DIR --checkpoint last|worst`, not `mnist-mlp serve`.\n"
        "```sh\n$ MNIST_MLP_DATA_DIR=/d mnist-mlp fly\nmnist-mlp sweep configs/sweep.yaml --workers N  # fine\n"
        "mnist-mlp train [--config FILE] [--set K=V ...]\necho mnist-mlp --bogus\n```\n"
    )
    assert broken_links(page, text) == [
        "page.md: missing.md: no such file",
        "page.md: nothing.png: no such file",
        "page.md: there.md#nowhere: no heading with that anchor in there.md",
    ]
    problems = rejected_commands(text)
    assert len(problems) == 3, problems
    assert "--nope" in problems[1] or "--nope" in problems[0]
    assert any("worst" in p for p in problems)
    assert any("'fly'" in p for p in problems)
    assert slug("The best: `configs/best.yaml` (40 epochs)") == "the-best-configsbestyaml-40-epochs"
