"""Small HTML pages for the person at a browser (single sign-on, the OAuth 2.0 API's sign-in
and account pages): never cached, never framed (no clickjacking of a sign-in form)."""

from __future__ import annotations

from html import escape

from aiohttp import web

NO_STORE = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
}

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>body{{font-family:sans-serif;max-width:32em;margin:3em auto;padding:0 1em;line-height:1.5}}
a.button,button{{display:inline-block;padding:.6em 1.2em;background:#0b7;color:#fff;border:0;
border-radius:6px;text-decoration:none;margin:.3em 0;font-size:1em;cursor:pointer}}
button.secondary{{background:#777}} label{{display:block;margin:.6em 0 .2em}}
input{{width:100%;padding:.4em;font-size:1em;box-sizing:border-box}} .error{{color:#b00}}</style></head>
<body><h1>{title}</h1>{body}</body></html>
"""


def page(title: str, body: str, status: int = 200) -> web.Response:
    """`body` is HTML: escape whatever in it came from a request or a client."""
    html = _PAGE.format(title=escape(title), body=body)
    return web.Response(text=html, status=status, content_type="text/html", headers=NO_STORE)


def error_page(title: str, message: str, status: int = 400) -> web.Response:
    return page(title, f'<p class="error">{escape(message)}</p>', status=status)
