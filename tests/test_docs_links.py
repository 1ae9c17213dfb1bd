"""Every relative link and image in README.md and docs/*.md resolves to a file or folder of the
repository, and a link's anchor names a heading of its Markdown target. The README keeps its shape:
at most 300 lines, the two commands in its first 40, a picture that exists."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
HTML_REF = re.compile(r"""<(?:img|a|source|video)\b[^>]*?\b(?:src|href)\s*=\s*["']([^"']+)["']""",
                      re.IGNORECASE)


def _parser() -> MarkdownIt:
    return MarkdownIt("commonmark").enable("table")


def references(text: str) -> list[str]:
    """Targets of the links and images of a Markdown text (inline, reference-style and HTML);
    code spans and code blocks hold none."""
    found: list[str] = []
    for tok in _parser().parse(text):
        if tok.type == "html_block":
            found += HTML_REF.findall(tok.content)
        for child in tok.children or []:
            if child.type == "link_open":
                found.append(str(child.attrs.get("href", "")))
            elif child.type == "image":
                found.append(str(child.attrs.get("src", "")))
            elif child.type == "html_inline":
                found += HTML_REF.findall(child.content)
    return found


def heading_anchors(text: str) -> set[str]:
    """The anchors GitHub gives a Markdown file's headings: rendered text lowercased, punctuation
    but '-' and '_' dropped, spaces to '-', repeats numbered."""
    tokens = _parser().parse(text)
    seen: dict[str, int] = {}
    anchors: set[str] = set()
    for i, tok in enumerate(tokens):
        if tok.type != "heading_open":
            continue
        inline = tokens[i + 1]
        words = "".join(c.content for c in inline.children or [] if c.type in ("text", "code_inline"))
        slug = re.sub(r"[^\w\- ]", "", words.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def broken_links(md: Path, root: Path = ROOT, check_anchors: bool = False) -> list[str]:
    """The relative references of `md` that do not resolve inside `root`, as 'target (why)'."""
    bad = []
    for ref in references(md.read_text(encoding="utf-8")):
        parts = urlsplit(ref)
        if parts.scheme or parts.netloc or ref.startswith("//"):
            continue  # absolute URLs: not checked (no network in the tests)
        target = md if not parts.path else (md.parent / unquote(parts.path)).resolve()
        if not parts.path and not parts.fragment:
            bad.append(f"{ref!r} (empty link)")
        elif root.resolve() not in (target, *target.parents):
            bad.append(f"{ref} (outside the repository)")
        elif not target.exists():
            bad.append(f"{ref} (no such file)")
        elif check_anchors and parts.fragment and target.suffix == ".md":
            if unquote(parts.fragment).lower() not in heading_anchors(target.read_text("utf-8")):
                bad.append(f"{ref} (no heading with that anchor in {target.name})")
    return bad


def markdown_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("md", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(md):
    assert broken_links(md, check_anchors=True) == []


def test_the_check_catches_broken_links(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "there.md").write_text("# A heading: with `code`\n\n## A heading: with code\n")
    (tmp_path / "pic.png").write_bytes(b"\x89PNG")
    md = tmp_path / "README.md"
    md.write_text(
        "[ok](docs/there.md) ![ok](pic.png) [ok](docs/there.md#a-heading-with-code-1) [web](https://x.y)\n"
        "[gone](docs/missing.md) ![gone](assets/none.png) [anchor](docs/there.md#nowhere)\n"
        "[ref-gone][r] [up](../outside.md) <img src=\"nope.png\">\n\n"
        "`[in code](not/checked.md)`\n\n    [in a code block](not/either.md)\n\n"
        "| a | b |\n|---|---|\n| [cell](docs/cell-gone.md) | 1 |\n\n"
        "[r]: docs/ref-missing.md\n")
    bad = broken_links(md, root=tmp_path, check_anchors=True)
    assert sorted(b.split(" ")[0] for b in bad) == sorted([
        "docs/missing.md", "assets/none.png", "docs/there.md#nowhere", "docs/ref-missing.md",
        "../outside.md", "nope.png", "docs/cell-gone.md"])
    assert broken_links(md, root=tmp_path, check_anchors=False) == [
        b for b in bad if "anchor" not in b]


def test_readme_shape():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; the lab notebook lives in docs/"
    first = "\n".join(lines[:40])
    assert "bash scripts/run_app.sh" in first and "bash scripts/test.sh" in first
    pictures = [r for r in references("\n".join(lines)) if r.endswith((".png", ".gif", ".jpg"))]
    assert pictures and all((ROOT / p).is_file() for p in pictures if "://" not in p)
