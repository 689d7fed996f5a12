"""Reading the project's Markdown as a reader sees it: fenced blocks, commands, links, headings.

Shared by tests/test_readme.py and tests/test_docs.py. (No name here starts with ``test``: a test
module importing it would collect it.)
"""

from __future__ import annotations

import re
from pathlib import Path

FENCE = re.compile(r"^(```+|~~~+)\s*([\w+-]*)")
SHELL = ("bash", "sh", "shell", "console")
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
INLINE_CODE = re.compile(r"`[^`]*`")


def blocks(text: str) -> list[tuple[str, list[str]]]:
    """Every fenced block as (its language, its lines); an unclosed fence is an error."""
    out, lang, body, fence = [], None, [], None
    for line in text.splitlines():
        m = FENCE.match(line)
        if fence is None and m:
            fence, lang, body = m.group(1), m.group(2).lower(), []
        elif fence is not None and line.strip().startswith(fence) and not line.strip()[len(fence):]:
            out.append((lang, body))
            fence = None
        elif fence is not None:
            body.append(line)
    assert fence is None, f"a fenced block ({fence}{lang}) is never closed"
    return out


def prose(text: str, keep_code: bool = False) -> list[str]:
    """The lines outside fenced blocks, with inline code removed (links there are not links)
    unless ``keep_code``."""
    lines, fence = [], None
    for line in text.splitlines():
        m = FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)
        elif fence is not None and line.strip().startswith(fence):
            fence = None
        elif fence is None:
            lines.append(line if keep_code else INLINE_CODE.sub("", line))
    return lines


def inline_commands(text: str, programs: tuple[str, ...]) -> list[str]:
    """Commands written as inline code in the prose (a span may run over a line break): the
    spans whose first word is one of ``programs``, white space normalised."""
    paragraphs = "\n".join(prose(text, keep_code=True)).split("\n\n")
    spans = [m.group(0)[1:-1] for p in paragraphs for m in INLINE_CODE.finditer(p)]
    return [" ".join(s.split()) for s in spans if s.split() and s.split()[0] in programs]


def _code_part(line: str) -> str:
    """``line`` up to its shell comment (a ``#`` at a word start, outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def commands(text: str) -> list[str]:
    """Every command of the shell blocks, as typed: comments dropped, ``\\`` continuations
    joined, ``&&`` chains split into their commands, runs of spaces made one."""
    out = []
    for lang, body in blocks(text):
        if lang not in SHELL:
            continue
        joined = re.sub(r"\\\n\s*", " ", "\n".join(_code_part(line).rstrip() for line in body))
        for line in joined.splitlines():
            for part in line.split(" && "):
                if part.strip():
                    out.append(" ".join(part.split()))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading)
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file (repeated headings get -1, -2, ... as on GitHub)."""
    seen: dict[str, int] = {}
    for line in prose(path.read_text(encoding="utf-8")):
        m = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if m:
            base = slug(m.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            seen.setdefault(f"{base}-{n}" if n else base, 1)
    return set(seen)


def links(path: Path) -> list[str]:
    """Every link and image target written in the file's prose."""
    return [m.group(1) for line in prose(path.read_text(encoding="utf-8"))
            for m in LINK.finditer(line)]
