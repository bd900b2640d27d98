"""Check the built docs site: ``python .ci/check_site.py site``.

Fails (exit 1, one line per problem) when a page shows a raw Sphinx role (``:class:``,
``:meth:``...), which markdown leaves as text, or a pipe with its backslash (``\\|``), or when a
link within the site points to a page, a file or an anchor that the site does not have.
"""

from __future__ import annotations

import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

RAW_ROLE = re.compile(r":(?:class|meth|func|doc|attr|data|mod|exc|obj):")


class _Page(HTMLParser):
    """The visible text, the link targets and the anchors of one HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.hrefs: list[str] = []
        self.anchors: set[str] = set()
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._hidden += 1
        found = dict(attrs)
        for name in ("id", "name"):
            if found.get(name):
                self.anchors.add(str(found[name]))
        if tag == "a" and found.get("href"):
            self.hrefs.append(str(found["href"]))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._hidden:
            self._hidden -= 1

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.text.append(data)


def _read(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def _target(site: Path, page: Path, href: str) -> tuple[Path, str] | None:
    """The file and anchor a link within the site points to; None for links elsewhere."""
    parts = urlsplit(href)
    if parts.scheme or parts.netloc or href.startswith("//"):
        return None
    if not parts.path:
        return page, unquote(parts.fragment)
    base = site if parts.path.startswith("/") else page.parent
    target = (base / unquote(parts.path).lstrip("/")).resolve()
    if target.is_dir():
        target = target / "index.html"
    return target, unquote(parts.fragment)


def check(site: Path) -> list[str]:
    """Every problem found in the site, one line each."""
    site = site.resolve()
    pages = {path: _read(path) for path in sorted(site.rglob("*.html"))}
    problems: list[str] = []
    for path, page in pages.items():
        name = path.relative_to(site)
        text = "".join(page.text)
        for role in sorted(set(RAW_ROLE.findall(text))):
            problems.append(f"{name}: shows a raw role {role}")
        if "\\|" in text:
            problems.append(f"{name}: shows an escaped pipe \\|")
        for href in page.hrefs:
            found = _target(site, path, href)
            if found is None:
                continue
            target, anchor = found
            if not target.is_relative_to(site) or not target.is_file():
                problems.append(f"{name}: link {href!r} points to no file of the site")
            elif anchor and target.suffix == ".html":
                linked = pages.get(target) or _read(target)
                if anchor not in linked.anchors:
                    problems.append(f"{name}: link {href!r} points to no anchor of its page")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python .ci/check_site.py SITE_DIR", file=sys.stderr)
        return 2
    problems = check(Path(argv[0]))
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} problems in the built site", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
