"""Just enough Markdown for the docs tests: which files, fenced blocks, headings, links.

Not a Markdown parser: it knows the subset the docs use (ATX headings, fenced code blocks opened
by ``` or ~~~, inline links and reference definitions, inline code spans).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)
_INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
_HTML_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")


def doc_files() -> list[Path]:
    """README.md, bench/README.md and every page under docs/, in a stable order."""
    files = [ROOT / "README.md", ROOT / "bench" / "README.md"]
    files += sorted((ROOT / "docs").rglob("*.md"))
    return [f for f in files if f.is_file()]


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@dataclass(frozen=True)
class Block:
    """A fenced code block: `lines[start]` is the opening fence, `lines[end]` the closing one."""

    start: int
    end: int
    info: str
    body: tuple[str, ...]
    marker: str | None  # the line directly above the opening fence, if it is an HTML comment


def fenced_blocks(lines: list[str]) -> list[Block]:
    blocks = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence = opening[1]
        j = i + 1
        while j < len(lines):
            closing = _FENCE.match(lines[j])
            if (closing and closing[1][0] == fence[0] and len(closing[1]) >= len(fence)
                    and not closing[2].strip()):
                break
            j += 1
        above = lines[i - 1].strip() if i > 0 else ""
        marker = above if above.startswith("<!--") and above.endswith("-->") else None
        blocks.append(Block(i, j, opening[2].strip(), tuple(lines[i + 1:j]), marker))
        i = j + 1
    return blocks


def prose_lines(lines: list[str]) -> list[tuple[int, str]]:
    """(index, line) of every line outside fenced blocks."""
    inside: set[int] = set()
    for block in fenced_blocks(lines):
        inside.update(range(block.start, block.end + 1))
    return [(i, line) for i, line in enumerate(lines) if i not in inside]


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor a page defines: its headings' slugs (numbered when repeated), HTML ids."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in prose_lines(text.splitlines()):
        heading = _HEADING.match(line)
        if heading:
            base = slug(heading[2])
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
        found.update(_HTML_ANCHOR.findall(line))
    return found


def links(text: str) -> list[tuple[int, str]]:
    """(line number, target) of every inline link, image and reference definition outside code.

    Link texts and code spans may run over a line break, as they do in the docs' wrapped prose.
    """
    lines = text.splitlines()
    kept = dict(prose_lines(lines))
    prose = "\n".join(kept.get(i, "") for i in range(len(lines)))
    prose = _CODE_SPAN.sub(lambda m: "code" + "\n" * m[0].count("\n"), prose)
    result = [(prose.count("\n", 0, m.start()) + 1, m[1]) for m in _INLINE_LINK.finditer(prose)]
    for number, line in enumerate(prose.splitlines(), 1):
        definition = _REFERENCE_DEF.match(line)
        if definition:
            result.append((number, definition[1]))
    return sorted(result, key=lambda found: found[0])
