"""The README and the docs pages: their commands run as written and their links lead somewhere."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from densenet_demo.cli.main import build_parser

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_FENCE = re.compile(r"```(\w*)\n(.*?)```", re.S)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = _FENCE.sub("", page.read_text(encoding="utf-8"))
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.*)$", text, re.M)}


def test_the_readme_gives_the_two_set_up_commands_and_keeps_the_spaces_front_matter():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    front = text.split("---\n")[1]
    for key in ("sdk: gradio", "app_file: app.py", "python_version:", "sdk_version:"):
        assert key in front
    assert "pip install -r requirements.txt && python app.py" in text
    assert "bash .ci/run" in text
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "requirements-dev.txt" in ci and re.search(r"^python -m pytest$", ci, re.M)
    assert (ROOT / "requirements.txt").is_file() and (ROOT / "app.py").is_file()


def test_the_readme_reads_in_two_minutes():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.split()) < 700  # about two minutes of reading; the rest is in docs/


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_leads_to_a_file_and_a_heading_that_exist(page):
    text = _FENCE.sub("", page.read_text(encoding="utf-8"))
    for target in _LINK.findall(text):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: {target}"
        if anchor and linked.suffix == ".md":
            assert anchor in _anchors(linked), f"{page.name}: {target}"


def _cli_lines() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for _, block in _FENCE.findall(page.read_text(encoding="utf-8")):
            for line in block.splitlines():
                command = line.split("  #")[0].strip()
                if command.startswith("python -m densenet_demo "):
                    found.append((page.name, command))
    return found


@pytest.mark.parametrize("page,command", _cli_lines())
def test_every_command_line_in_the_docs_parses(page, command):
    words = shlex.split(re.sub(r"<[^>]+>", "RUN", command))[3:]
    build_parser().parse_args(words)  # argparse exits (SystemExit) on an unknown command or flag


def test_every_endpoint_the_api_page_names_exists():
    from densenet_demo.ui.app import build_app

    demo = build_app()
    names = {getattr(fn, "api_name", None) for fn in demo.fns.values()}
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    named = set(re.findall(r'api_name="/(\w+)"', text)) | set(re.findall(r"`/(\w+)\(", text))
    assert named and named <= names, named - names


def test_every_benchmark_the_docs_name_exists():
    for page in PAGES:
        for script in re.findall(r"bench/(\w+\.py)", page.read_text(encoding="utf-8")):
            assert (ROOT / "bench" / script).is_file(), f"{page.name}: bench/{script}"
