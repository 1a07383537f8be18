"""Markdown → Matrix `org.matrix.custom.html` message content.

Raw HTML in the source is escaped, not passed through: bot replies often echo user input, and
a bot must not be a way to inject markup into other people's clients. A single paragraph is
rendered inline (no `<p>` wrapper), as Element does, so short replies look natural.
"""

from __future__ import annotations

from typing import Any

from markdown_it import MarkdownIt

_md = MarkdownIt("commonmark", {"html": False, "linkify": False, "breaks": True}).enable(
    ["strikethrough", "table"]
)

HTML_FORMAT = "org.matrix.custom.html"


def markdown_to_html(text: str) -> str:
    html = str(_md.render(text)).strip()
    # One plain paragraph: drop the wrapper, as Matrix clients do for their own messages.
    if html.startswith("<p>") and html.endswith("</p>") and html.count("<p>") == 1:
        html = html[3:-4]
    return html


def text_content(text: str, *, markdown: bool = True, msgtype: str = "m.text") -> dict[str, Any]:
    """Message content with a plain `body` and, when markdown changes anything, `formatted_body`."""
    content: dict[str, Any] = {"msgtype": msgtype, "body": text}
    if markdown:
        html = markdown_to_html(text)
        if html != _escape(text):
            content["format"] = HTML_FORMAT
            content["formatted_body"] = html
    return content


def _escape(text: str) -> str:
    return (
        text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("\n", "<br />\n")
    )
