"""What a client of the SMART pages needs in tests: a PKCE pair, and the inputs of
the login and consent pages' forms."""

from __future__ import annotations

import base64
import hashlib
import secrets
from html.parser import HTMLParser


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class PageForm(HTMLParser):
    """The inputs of the page's form: hidden/text values, checkboxes, select options."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[str, str] = {}
        self.checkboxes: list[str] = []
        self.options: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "input" and a.get("type") == "checkbox":
            self.checkboxes.append(a["value"])
        elif tag == "input" and "name" in a:
            self.fields[a["name"]] = a.get("value", "")
        elif tag == "option":
            self.options.append(a["value"])


def parse_form(html: str) -> PageForm:
    parser = PageForm()
    parser.feed(html)
    return parser
