"""A report's Markdown as sanitized HTML (for email and `reports show --html`).

Templates are user content, and so is the data they quote: the Markdown is rendered by
markdown-it-py (CommonMark plus tables; raw HTML passes through the parser) and the result is
cleaned by nh3 (the Ammonia sanitizer), which drops `<script>`/`<style>` with their content,
every event-handler attribute and `javascript:` URLs, keeping ordinary formatting.
"""

from __future__ import annotations

import functools
import html

import nh3
from markdown_it import MarkdownIt

# The page around the fragment: inline styles only, as mail clients drop <style> blocks often.
_PAGE = (
    '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title></head>\n'
    '<body style="font-family: sans-serif; line-height: 1.4; max-width: 50em">\n{body}\n</body></html>\n'
)


@functools.cache
def _markdown() -> MarkdownIt:
    return MarkdownIt("commonmark", {"html": True, "linkify": False}).enable("table")


def markdown_to_html(markdown: str) -> str:
    """The sanitized HTML fragment of `markdown`."""
    return nh3.clean(_markdown().render(markdown))


def report_page(markdown: str, title: str) -> str:
    """A whole HTML document for a report (the fragment sanitized, the title escaped)."""
    return _PAGE.format(title=html.escape(title), body=markdown_to_html(markdown))
