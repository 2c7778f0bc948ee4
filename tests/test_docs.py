"""The documentation stays true: the generated CLI reference is current, every relative link
(and its anchor) resolves, the README reaches every how-to page in one click, every
`toolkit ...` command the pages show uses options its command has, and the getting-started
walk-through runs on synthetic data."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load_generator():
    """``docs/cli_reference.py``, the generator of the CLI pages (a script beside them)."""
    spec = importlib.util.spec_from_file_location(
        "cli_reference", REPO / "docs" / "cli_reference.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GENERATOR = _load_generator()
DOCS = REPO / "docs"
README = REPO / "README.md"
GENERATED = GENERATOR.DEFAULT_FOLDER
PAGES = [README, *sorted(DOCS.rglob("*.md"))]
WRITTEN = [p for p in PAGES if GENERATED not in p.parents]  # pages people write
HOW_TO = sorted((DOCS / "how-to").glob("*.md"))

_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^(\s*)```")


def _relative(page: Path) -> str:
    return str(page.relative_to(REPO))


def _without_code(text: str) -> str:
    """The page without fenced blocks and inline code (links are not looked for there)."""
    kept, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            kept.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(kept)


def _code_blocks(text: str) -> list[list[str]]:
    blocks, current = [], None
    for line in text.splitlines():
        if _FENCE.match(line):
            if current is None:
                current = []
            else:
                blocks.append(current)
                current = None
        elif current is not None:
            current.append(line.strip())
    return blocks


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to '-'."""
    anchors: set[str] = set()
    counts: dict[str, int] = {}
    fenced = False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if fenced or not match:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
        n = counts.get(slug, 0)
        counts[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def links(page: Path) -> list[str]:
    text = _without_code(page.read_text())
    return [a or b for a, b in _LINK.findall(text)]


def test_cli_reference_is_generated_from_the_current_app():
    stale = GENERATOR.stale_pages(GENERATED)
    assert not stale, f"stale CLI reference pages {stale}: run `make docs`"


def test_heading_anchors_follow_github():
    text = (
        "# `toolkit convert` — a task\n## dataset.json\n## Run\n## Run\n```\n# not a heading\n```"
    )
    assert heading_anchors(text) == {
        "toolkit-convert--a-task",
        "datasetjson",
        "run",
        "run-1",
    }


@pytest.mark.parametrize("page", PAGES, ids=_relative)
def test_relative_links_and_anchors_resolve(page):
    broken = []
    for target in links(page):
        if re.match(r"^[a-z]+:", target):  # https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif (
            anchor
            and resolved.suffix == ".md"
            and anchor not in heading_anchors(resolved.read_text())
        ):
            broken.append(f"{target} (no heading #{anchor})")
    assert not broken, f"{_relative(page)}: broken links: {broken}"


def test_readme_reaches_every_how_to_page_in_one_click():
    targets = {(REPO / t.partition("#")[0]).resolve() for t in links(README)}
    missing = [_relative(p) for p in HOW_TO if p.resolve() not in targets]
    assert HOW_TO and not missing, f"README.md does not link {missing}"
    for page in ("getting-started.md", "reference/files.md", "reference/cli/index.md"):
        assert (DOCS / page).resolve() in targets, f"README.md does not link docs/{page}"


# the commands the pages show --------------------------------------------------------------


COMMANDS = GENERATOR.commands()
ROOT_OPTIONS = {"--help", "-h", "--version"}


def toolkit_invocations(page: Path) -> list[list[str]]:
    """The argument lists after `toolkit` of every command line in the page's code blocks
    (continued lines joined, comments and environment assignments dropped)."""
    found = []
    for block in _code_blocks(page.read_text()):
        joined, pending = [], ""
        for line in block:
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            joined.append(pending + line)
            pending = ""
        for line in joined:
            try:
                words = shlex.split(line, comments=True)
            except ValueError:
                continue
            if "toolkit" not in words:
                continue
            start = words.index("toolkit")
            if start > 0 and words[start - 1] != "-m" and not all("=" in w for w in words[:start]):
                continue  # `pip install 'toolkit[ray]'` and the like
            found.append(words[start + 1 :])
    return found


def option_problems(arguments: list[str]) -> list[str]:
    if not arguments:
        return []
    name = arguments[0]
    if name.startswith("-"):
        return [] if name in ROOT_OPTIONS else [f"`toolkit` has no option {name}"]
    if name not in COMMANDS:
        return [f"no command `toolkit {name}`"]
    command = COMMANDS[name]
    known = {"--help", "-h"}
    for param in command.params:
        known.update(param.opts)
        known.update(param.secondary_opts)
    problems = []
    for word in arguments[1:]:
        if word.startswith("-") and not re.match(r"^-\d", word):
            option = word.split("=", 1)[0]
            if option not in known:
                problems.append(f"`toolkit {name}` has no option {option}")
    return problems


@pytest.mark.parametrize("page", WRITTEN, ids=_relative)
def test_documented_commands_use_options_their_command_has(page):
    problems = [p for args in toolkit_invocations(page) for p in option_problems(args)]
    assert not problems, f"{_relative(page)}: {problems}"


def test_option_check_finds_a_wrong_option():
    assert option_problems(["run-all", "X", "--preset", "smoke"]) == []
    assert option_problems(["run-all", "X", "--executor=ray"]) == []
    assert option_problems(["run-all", "X", "--no-such-option"]) == [
        "`toolkit run-all` has no option --no-such-option"
    ]
    assert option_problems(["no-such-command"]) == ["no command `toolkit no-such-command`"]
    assert option_problems(["--version"]) == []


@pytest.mark.parametrize("page", HOW_TO, ids=_relative)
def test_every_how_to_page_shows_toolkit_commands(page):
    assert toolkit_invocations(page), f"{_relative(page)} shows no `toolkit` command"


# the getting-started walk-through, run --------------------------------------------------


WALKTHROUGH_MARK = "<!-- run by tests/test_docs.py -->"


def walkthrough() -> list[str]:
    """The command lines of the code block that follows the mark in getting-started.md."""
    text = (DOCS / "getting-started.md").read_text()
    assert WALKTHROUGH_MARK in text
    block = _code_blocks(text.split(WALKTHROUGH_MARK, 1)[1])[0]
    return [line for line in block if line and not line.startswith("#")]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_getting_started_walkthrough_runs_on_synthetic_data(tmp_path):
    """Each command of the walk-through as a user types it, with /tmp moved into tmp_path."""
    env = {**os.environ, "TOOLKIT_WORKSPACE": str(tmp_path / "workspace"), "TOOLKIT_QUIET": "1"}
    for line in walkthrough():
        words = shlex.split(line.replace("/tmp/", f"{tmp_path}/"), comments=True)
        assert words[0] == "toolkit", line
        result = subprocess.run(
            [sys.executable, "-m", "toolkit", *words[1:]],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert result.returncode == 0, (
            f"`{line}` failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
        )
    dataset = tmp_path / "workspace" / "Task901_SynthMR"
    assert (dataset / "selection.json").is_file()
    assert (dataset / "evaluation" / "report.md").is_file()
    assert list((tmp_path / "predictions").glob("*.nii.gz"))
