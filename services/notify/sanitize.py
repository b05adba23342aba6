"""Tweet text made inert for the people and systems notify hands it to.

Anyone can write a tweet, so every channel shows it as text: never as markup, a template, a
header, a mention that pings a whole team, or a trick of the eye; and always within what the
target accepts. All of that happens here, in pure functions that every channel uses:

- ``inert`` removes what changes how text is shown without being seen: C0 and C1 controls,
  bidi embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069, the "Trojan Source"
  characters), zero-width spaces, word joiners, invisible operators, BOMs and tag characters
  (which can smuggle invisible ASCII). Zero-width joiners and non-joiners stay between
  non-ASCII characters, where emoji sequences and several scripts need them, and go next to
  ASCII, where they join nothing and only hide (``pay\\u200dpal``); left-to-right and
  right-to-left marks stay: they cannot reorder text the way overrides do. Every line break
  becomes ``\\n``. Chat-wide mentions (@channel, @here, @everyone, @all...) get a full-width
  at sign (＠here) that no chat tool expands. A link's host written in non-ASCII letters is
  shown as punycode (``xn--``), so a look-alike domain does not pass for the real one, and a
  link longer than ``URL_LIMIT`` is shortened in the middle.
- ``one_line`` is for subjects, summaries and names: inert, whitespace collapsed, no line
  break left (so no header can be added), cut to a limit.
- ``clip`` cuts text to a target's limit, saying so, instead of letting the target refuse it.
- ``html`` escapes for targets that render HTML; ``chat`` escapes ``&``, ``<`` and ``>`` the way
  Slack and Mattermost expect, which also disarms ``<!channel>`` and ``<@U123>``.

JSON and Jira's document format carry text as data: they need no escaping. Template syntax
(``{{ }}``, ``{% %}``, ``${...}``) needs none either: templates are compiled from files, and
tweet text is only ever a value passed to them.

``redact`` (``notify.redact``, off by default) replaces e-mail addresses and phone numbers.
It is a heuristic that errs towards redacting: long digit runs such as order numbers of nine
digits or more count as phone numbers.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from markupsafe import Markup, escape

from switchboard.notify.config import RedactConfig
from switchboard.shared.events import RoutedTweet, Tweet

URL_LIMIT = 200
CUT = "… [truncated]"
SHORT_CUT = "…"

_INVISIBLE = re.compile(
    "[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f"  # controls; tab and line breaks are handled apart
    "\u00ad\u180e\u200b\u202a-\u202e\u2060-\u2064\u2066-\u2069"
    "\ufeff\ufff9-\ufffb\U000e0000-\U000e007f]"
)
_IDLE_JOINER = re.compile("(?<![^\x00-\x7f])[\u200c\u200d]|[\u200c\u200d](?![^\x00-\x7f])")
_LINE_BREAK = re.compile("\r\n|[\r\x0b\x0c\x85\u2028\u2029]")
_BROADCAST = re.compile(r"@(?=(?:channel|here|everyone|all|group|room)\b)", re.IGNORECASE)
_URL = re.compile(r"\bhttps?://[^\s<>\"']+", re.IGNORECASE)
_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_PHONE = re.compile(r"(?<![\w/#=&.+-])(?:\+|00|\()?\d(?:[ \t\u00a0().-]{0,2}\d){6,18}(?![\w/])")


def inert(text: str) -> str:
    """``text`` as it may be shown anywhere: see the module's docstring."""
    text = _INVISIBLE.sub("", text)
    text = _IDLE_JOINER.sub("", text)
    text = _LINE_BREAK.sub("\n", text)
    text = _URL.sub(lambda found: shown_url(found.group()), text)
    return _BROADCAST.sub("\uff20", text)


Measure = Callable[[str], int]


def utf8_bytes(text: str) -> int:
    """Length in UTF-8 bytes, as Salesforce limits a CaseComment's body."""
    return len(text.encode("utf-8"))


def utf16_units(text: str) -> int:
    """Length as Jira and Salesforce measure it (Java strings): UTF-16 code units, two for an
    emoji or any character outside the Basic Multilingual Plane."""
    return len(text.encode("utf-16-le")) // 2


def one_line(text: str, limit: int, measure: Measure = len) -> str:
    """Inert, on one line, at most ``limit`` long by ``measure`` (characters by default)."""
    return clip(" ".join(inert(text).split()), limit, SHORT_CUT, measure)


def clip(text: str, limit: int, cut: str = CUT, measure: Measure = len) -> str:
    """``text`` if it fits in ``limit`` (by ``measure``), else its start and ``cut``. A cut
    falls between characters, never inside one."""
    if measure(text) <= limit:
        return text
    room = max(0, limit - measure(cut))
    if measure is len:
        return text[:room].rstrip() + cut
    end, used = 0, 0
    for end, character in enumerate(text):  # noqa: B007 - end is read after the loop
        used += measure(character)
        if used > room:
            break
    return text[:end].rstrip() + cut


def shown_url(url: str) -> str:
    """A link as shown to a reader: its host in ASCII (punycode), at most ``URL_LIMIT`` long."""
    scheme, _, rest = url.partition("://")
    end = next((i for i, ch in enumerate(rest) if ch in "/?#"), len(rest))
    host, tail = rest[:end], rest[end:]
    if not host.isascii():
        host = ".".join(_ascii_label(label) for label in re.split("[.\u3002\uff0e\uff61]", host))
    shown = f"{scheme}://{host}{tail}"
    if len(shown) <= URL_LIMIT:
        return shown
    head = URL_LIMIT * 3 // 4
    return shown[:head] + SHORT_CUT + shown[len(shown) - (URL_LIMIT - head - 1) :]


def _ascii_label(label: str) -> str:
    if label.isascii():
        return label
    try:
        return label.encode("idna").decode("ascii")
    except UnicodeError:  # not a valid IDNA label: still shown in ASCII, never as look-alikes
        return "xn--" + label.encode("punycode").decode("ascii")


def web_link(url: str) -> str:
    """``url`` if it is an http(s) link, else an empty string (never ``javascript:``)."""
    return url if re.match(r"https?://[^\s<>\"']+$", url, re.IGNORECASE) else ""


def html(text: str) -> Markup:
    """Inert text as HTML: every character escaped, line breaks as ``<br>``."""
    return Markup("<br>\n").join(escape(line) for line in inert(text).split("\n"))


def chat(text: str) -> str:
    """Text for chat tools (Slack, Mattermost): ``&``, ``<`` and ``>`` escaped."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def shown_tweet(tweet: Tweet, text_limit: int) -> Tweet:
    """The tweet as templates show it: inert text within ``text_limit``, one-line author
    names, and a link only if it is a web link."""
    author = tweet.author.model_copy(
        update={
            "username": one_line(tweet.author.username, 50),
            "name": one_line(tweet.author.name, 100) if tweet.author.name else None,
        }
    )
    return tweet.model_copy(
        update={
            "text": clip(inert(tweet.text), text_limit),
            "author": author,
            "url": web_link(tweet.url),
        }
    )


def redact(text: str, options: RedactConfig) -> str:
    """``text`` with e-mail addresses and phone numbers replaced, as ``options`` ask; read
    without its invisible characters, as every channel shows it (``inert``): a zero-width space
    inside an address would hide it from the patterns, then vanish when shown."""
    if options.email_addresses or options.phone_numbers:
        text = _IDLE_JOINER.sub("", _INVISIBLE.sub("", text))
    if options.email_addresses:
        text = _EMAIL.sub("[email]", text)
    if options.phone_numbers:
        text = _PHONE.sub(_phone_or_not, text)
    return text


def _phone_or_not(found: re.Match[str]) -> str:
    value = found.group()
    digits = sum(ch.isdigit() for ch in value)
    international = value.startswith(("+", "00"))
    if 7 <= digits <= 15 and (international or digits >= 9):
        return "[phone]"
    return value


def redacted(routed: RoutedTweet, options: RedactConfig) -> RoutedTweet:
    """``routed`` with its text and author name redacted (itself when nothing is to be)."""
    if not (options.email_addresses or options.phone_numbers):
        return routed
    tweet = routed.tweet
    name = redact(tweet.author.name, options) if tweet.author.name else None
    author = tweet.author.model_copy(update={"name": name})
    shown = tweet.model_copy(update={"text": redact(tweet.text, options), "author": author})
    return routed.model_copy(update={"tweet": shown})
