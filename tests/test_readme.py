"""The README and docs/ stay true: every setting documented, the two set-up commands exist and CI runs
the test one, the README stays short and links every page, and every relative link resolves."""

from __future__ import annotations

import re

from space.settings import Settings, env_name
from tests.conftest import REPO

README_PATH = REPO / "README.md"
README = README_PATH.read_text()
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README_PATH, *DOCS]
MAX_README_LINES = 250

FENCE = re.compile(r"^(```|~~~).*?^\1", flags=re.M | re.S)  # fenced code blocks: links there are code
INLINE_CODE = re.compile(r"`[^`\n]*`")
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")  # [text](target "title")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", flags=re.M)  # [label]: target
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", flags=re.I)  # http:, https:, mailto:, ...


def section(text: str, heading: str) -> str:
    """The text under the level-2 ``heading``, up to the next level-2 heading (or the end)."""
    match = re.search(rf"^{re.escape(heading)}\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert match, f"no '{heading}' section"
    return match.group(1)


def relative_links(text: str) -> list[str]:
    """Targets of the markdown links and images in ``text`` that point into the repository."""
    prose = INLINE_CODE.sub("", FENCE.sub("", text))
    targets = INLINE_LINK.findall(prose) + REFERENCE_LINK.findall(prose)
    return [t for t in targets if not EXTERNAL.match(t) and not t.startswith("#")]


def test_every_setting_is_in_the_configuration_table() -> None:
    table = section(README, "## Configuration")
    missing = [env_name(name) for name in Settings.model_fields if f"`{env_name(name)}`" not in table]
    assert not missing, f"settings missing from the README's configuration table: {missing}"


def test_the_two_commands_exist_and_ci_runs_the_test_command() -> None:
    assert "make run" in README and "make test" in README
    targets = set(re.findall(r"^([a-z-]+):", (REPO / "Makefile").read_text(), flags=re.M))
    assert {"run", "test", "container-test"} <= targets
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci and "make container-test" in ci


def test_the_readme_is_short() -> None:
    lines = len(README.splitlines())
    too_long = f"README.md has {lines} lines (at most {MAX_README_LINES}): move detail to docs/"
    assert lines <= MAX_README_LINES, too_long


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {(REPO / target.split("#")[0]).resolve() for target in relative_links(README)}
    assert DOCS, "docs/ holds no pages"
    unlinked = [page.name for page in DOCS if page.resolve() not in linked]
    assert not unlinked, f"docs pages the README does not link to: {unlinked}"


def test_every_relative_link_resolves() -> None:
    broken = []
    for page in PAGES:
        for target in relative_links(page.read_text()):
            path = target.split("#")[0].split("?")[0]
            if path and not (page.parent / path).exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert not broken, f"relative links to files that do not exist: {broken}"


def test_the_link_finder_sees_links_and_skips_code() -> None:
    text = (
        'See [a](docs/a.md#x), ![b](b.png "t"), [web](https://x.org), [here](#y), `[c](c.md)`.\n'
        "```\n[d](d.md)\n```\n[e]: e.md\n"
    )
    assert relative_links(text) == ["docs/a.md#x", "b.png", "e.md"]
