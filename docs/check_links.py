"""Check every internal link and anchor of a built HTML site (no network).

Usage: ``python docs/check_links.py docs/_build/html``. Each ``href`` and ``src`` of every
page that points inside the site must name an existing file and, with a ``#fragment``, an
``id`` (or ``name``) in that file. External links (``http:``, ``https:``, ``mailto:``) are
counted, not fetched. Exits with status 1 and lists each broken link otherwise.
"""

from __future__ import annotations

import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

EXTERNAL = ("http", "https", "mailto", "ftp", "data", "javascript")


class Page(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("id", "name") if tag == "a" else ("id",):
            if attrs.get(key):
                self.ids.add(attrs[key])
        for key in ("href", "src"):
            if attrs.get(key) and not (
                tag == "link" and attrs.get("rel") in ("preconnect", "dns-prefetch")
            ):
                self.links.append(attrs[key])


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8", errors="replace"))
    return page


def check(site: Path) -> tuple[list[str], int, int]:
    pages = {p.resolve(): parse(p) for p in site.rglob("*.html")}
    broken, internal, external = [], 0, 0
    for path, page in sorted(pages.items()):
        for link in page.links:
            parts = urlsplit(link)
            if parts.scheme in EXTERNAL or link.startswith("//"):
                external += 1
                continue
            internal += 1
            target = path if not parts.path else (path.parent / unquote(parts.path)).resolve()
            where = f"{path.relative_to(site.resolve())}: {link}"
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{where} (no file {target.name})")
                continue
            fragment = unquote(parts.fragment)
            if fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else parse(target).ids
                if fragment not in ids:
                    broken.append(f"{where} (no anchor #{fragment})")
    return broken, internal, external


def main(argv: list[str]) -> int:
    site = Path(argv[1] if len(argv) > 1 else "docs/_build/html")
    if not (site / "index.html").is_file():
        print(f"check_links: {site}/index.html not found: build the site first", file=sys.stderr)
        return 2
    broken, internal, external = check(site)
    for line in broken:
        print(f"broken link: {line}", file=sys.stderr)
    print(
        f"check_links: {internal} internal links checked, {len(broken)} broken; "
        f"{external} external links not fetched"
    )
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
