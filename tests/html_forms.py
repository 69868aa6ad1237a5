"""Submit a page's HTML form the way a browser does, for HTTP-level tests.

Building the post by hand (a fixed URL plus the hidden fields) hides what the page really sends: a form with an
empty action posts back to the page's own URL, query string included, so its hidden copies of the query arrived
twice and the sandbox refused the standalone sign-in ("Multiple 'response_type'") in every real browser.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit, urlunsplit

import requests

NOT_SUBMITTED = {"submit", "button", "image", "reset", "file"}


@dataclass
class Select:
    name: str
    options: list[str] = field(default_factory=list)
    selected: str | None = None


@dataclass
class Form:
    """One ``<form>``: where it goes, and its controls in document order."""

    action: str  # resolved against the page URL, as a browser resolves it
    method: str
    controls: list[tuple[str, str | None]] = field(default_factory=list)  # non-button controls (None: unchecked)
    selects: dict[str, Select] = field(default_factory=dict)
    radios: dict[str, list[str]] = field(default_factory=dict)  # radio group name -> its values
    checkboxes: dict[str, str] = field(default_factory=dict)  # checkbox name -> the value it sends when ticked
    buttons: list[tuple[str, str]] = field(default_factory=list)  # named submit buttons

    def names(self) -> set[str]:
        return {n for n, _ in self.controls} | {n for n, _ in self.buttons}

    def data(self, press: tuple[str, str] | None = None, **choices: str) -> list[tuple[str, str]]:
        """The form data set a browser sends when ``press`` (name, value) is clicked after ``choices`` are made.

        Only controls on the page can be set, and a select or radio group only to one of its options, as in a
        browser; an unchecked radio group sends nothing.
        """
        unknown = set(choices) - {n for n, _ in self.controls}
        if unknown:
            raise KeyError(f"no such control on the form: {sorted(unknown)}")
        for name, value in choices.items():
            options = self.selects[name].options if name in self.selects else self.radios.get(name)
            if name in self.checkboxes:
                options = [self.checkboxes[name]]
            if options is not None and value not in options:
                raise ValueError(f"{value!r} is not one of the options of {name!r}: {options}")
        chosen = [(n, choices.get(n, v)) for n, v in self.controls]
        data = [(n, v) for n, v in chosen if v is not None]
        if press is not None:
            if press not in self.buttons:
                raise KeyError(f"no submit button {press!r} on the form: {self.buttons}")
            data.append(press)
        return data

    def submit(
        self,
        http: requests.Session,
        press: tuple[str, str] | None = None,
        *,
        allow_redirects: bool = True,
        **choices: str,
    ) -> requests.Response:
        """Send the form to its own action with its own method, as a browser does on clicking ``press``."""
        data = self.data(press, **choices)
        if self.method == "post":
            return http.post(self.action, data=data, allow_redirects=allow_redirects, timeout=30)
        # A GET form replaces the action's query string with the form data.
        url = urlunsplit(urlsplit(self.action)._replace(query="", fragment=""))
        return http.get(url, params=data, allow_redirects=allow_redirects, timeout=30)


class _FormParser(HTMLParser):
    def __init__(self, base_url: str) -> None:
        super().__init__(convert_charrefs=True)
        self.base_url = base_url
        self.forms: list[Form] = []
        self._form: Form | None = None
        self._select: Select | None = None
        self._option: dict[str, str | None] | None = None
        self._textarea: list | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: (v if v is not None else "") for k, v in attrs}
        if tag == "form":
            # An absent or empty action means the document's own URL, query string included.
            action = urljoin(self.base_url, a["action"]) if a.get("action") else self.base_url
            self._form = Form(action=action.split("#")[0], method=(a.get("method") or "get").lower())
            self.forms.append(self._form)
            return
        form = self._form
        if form is None or "disabled" in a:
            return
        name = a.get("name")
        if tag == "input":
            kind = (a.get("type") or "text").lower()
            if not name:
                return
            if kind in ("submit", "image"):
                form.buttons.append((name, a.get("value", "")))
            elif kind == "radio":
                if name not in form.radios:
                    form.radios[name] = []
                    form.controls.append((name, None))
                form.radios[name].append(a.get("value", "on"))
                if "checked" in a:
                    form.controls = [(n, a.get("value", "on") if n == name else v) for n, v in form.controls]
            elif kind == "checkbox":  # sent only when ticked, and then with its own value
                form.checkboxes[name] = a.get("value", "on")
                form.controls.append((name, form.checkboxes[name] if "checked" in a else None))
            elif kind not in NOT_SUBMITTED:
                form.controls.append((name, a.get("value", "")))
        elif tag == "button":
            if name and (a.get("type") or "submit").lower() == "submit":
                form.buttons.append((name, a.get("value", "")))
        elif tag == "select" and name:
            self._select = Select(name)
        elif tag == "option" and self._select is not None:
            self._option = {"value": a.get("value") if "value" in a else None, "text": "", "selected": None}
            if "selected" in a:
                self._option["selected"] = "yes"
        elif tag == "textarea" and name:
            self._textarea = [name, ""]

    def handle_data(self, data: str) -> None:
        if self._option is not None:
            self._option["text"] = (self._option["text"] or "") + data
        elif self._textarea is not None:
            self._textarea[1] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "option" and self._option is not None:
            self._close_option()
        elif tag == "select" and self._select is not None:
            self._close_option()
            select, self._select = self._select, None
            if self._form is not None and select.options:
                select.selected = select.selected or select.options[0]
                self._form.selects[select.name] = select
                self._form.controls.append((select.name, select.selected))
        elif tag == "textarea" and self._textarea is not None and self._form is not None:
            self._form.controls.append((self._textarea[0], self._textarea[1].removeprefix("\n")))
            self._textarea = None
        elif tag == "form":
            self._form = None

    def _close_option(self) -> None:
        option, self._option = self._option, None
        if option is None or self._select is None:
            return
        value = option["value"] if option["value"] is not None else " ".join((option["text"] or "").split())
        self._select.options.append(value)
        if option["selected"] and self._select.selected is None:
            self._select.selected = value


def forms(page: requests.Response) -> list[Form]:
    """Every form on a fetched page, actions resolved against the URL the page was served from."""
    parser = _FormParser(page.url)
    parser.feed(page.text)
    parser.close()
    return parser.forms


def form_with(page: requests.Response, control: str) -> Form:
    """The one form on the page that has a control (or submit button) named ``control``."""
    found = [f for f in forms(page) if control in f.names()]
    assert len(found) == 1, f"{len(found)} forms with a {control!r} control on {page.url}"
    return found[0]
