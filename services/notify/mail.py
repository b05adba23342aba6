"""Email notifications: rendering (pure) and sending over SMTP (aiosmtplib).

Tweet text is untrusted. Templates see it made inert (sanitize.py) and only as a value, never
as template source; the HTML body is autoescaped; header values are one line (sanitize.one_line),
so that a tweet can never add a header.

Messages are built with the ``email.mime`` classes (the compat32 policy): the modern
``EmailMessage`` parses every header it is given back into objects, which made building an
email a large share of notify's CPU under load (docs/performance.md). What that parsing did
for us is done here explicitly: non-ASCII display names and header values are RFC 2047 encoded
(``_header``, ``_addresses``), bodies are quoted-printable UTF-8.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping
from email.charset import BASE64, QP, Charset
from email.header import Header
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import formataddr, getaddresses
from functools import lru_cache
from pathlib import Path

import aiosmtplib
from jinja2 import (
    BaseLoader,
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    PackageLoader,
    StrictUndefined,
    TemplateNotFound,
    TemplateSyntaxError,
    select_autoescape,
)

from switchboard.notify import metrics
from switchboard.notify.config import EmailConfig, Subscription
from switchboard.notify.sanitize import one_line, shown_tweet
from switchboard.notify.settings import SmtpSettings
from switchboard.shared.events import RoutedTweet
from switchboard.shared.settings import ConfigError

log = logging.getLogger(__name__)

SUBJECT_LIMIT = 200
TEXT_LIMIT = 32_000  # of a tweet in an email; a long post holds up to 25,000
UTF8 = Charset("utf-8")
UTF8.header_encoding = BASE64  # shortest-of-both, the default, costs as much as the rest
UTF8.body_encoding = QP  # readable in a raw message, unlike base64


@lru_cache(maxsize=8)
def templates(folder: Path | None = None) -> Environment:
    """The built-in templates, overridden by same-named files in ``folder`` if given."""
    loaders: list[BaseLoader] = [PackageLoader("switchboard.notify", "templates")]
    if folder is not None:
        loaders.insert(0, FileSystemLoader(str(folder)))
    return Environment(
        loader=ChoiceLoader(loaders),
        autoescape=select_autoescape(enabled_extensions=("html.j2",), default=False),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )


def check_templates(options: EmailConfig, subscriptions: list[Subscription]) -> None:
    """Fail at start, naming the subscription, when an email template does not exist (and
    naming the folder when it is not there: its templates would silently never be used)."""
    folder = options.templates_dir
    if folder is not None and not folder.is_dir():
        raise ConfigError(f"config key notify.email.templates_dir: {folder} is not a folder")
    env = templates(folder)
    for index, subscription in enumerate(subscriptions):
        if subscription.channel != "email":
            continue
        names = [subscription.template] + (["digest"] if subscription.digest_minutes else [])
        for name, suffix in ((n, s) for n in names for s in ("txt.j2", "html.j2")):
            # a digest's templates too: one that does not parse failed at every sweep, and
            # its tweets never went out, not even one by one
            key = "template" if name == subscription.template else "digest_minutes"
            try:
                env.get_template(f"{name}.{suffix}")
            except TemplateNotFound:
                raise ConfigError(
                    f"config key notify.subscriptions[{index}].{key}: no template "
                    f"{name}.{suffix} (built in, or in notify.email.templates_dir)"
                ) from None
            except TemplateSyntaxError as exc:
                raise ConfigError(
                    f"config key notify.subscriptions[{index}].{key}: "
                    f"{exc.filename or exc.name}, line {exc.lineno}: {exc.message}"
                ) from None


def message_id(delivery_id: str) -> str:
    """The same Message-ID every time a delivery is sent, so that mail systems drop a copy sent
    again after a crash (``email.utils.make_msgid`` adds the time and a random number)."""
    local = re.sub(r"[^A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]", ".", delivery_id.replace(":", "."))
    return f"<{local}@switchboard>"


def render_email(
    routed: RoutedTweet,
    subscription: Subscription,
    options: EmailConfig,
    delivery_id: str,
    names: Mapping[str, str] | None = None,
) -> Message:
    """The email of one delivery; ``names``: the departments' display names (``departments``
    in the YAML file), by code."""
    c = routed.classification
    department_name = (names or {}).get(c.department.value, c.department.value)
    context = {
        "tweet": shown_tweet(routed.tweet, TEXT_LIMIT),
        "classification": c,
        "route": routed.route,
        "department": c.department.value,
        "department_name": department_name,
        "urgency": c.urgency.value,
        "subscription": subscription.name,
    }
    subject = (
        f"{options.subject_prefix} {c.urgency.value.upper()} {department_name}: "
        f"@{routed.tweet.author.username}: {routed.tweet.text}"
    )
    env = templates(options.templates_dir)
    name = subscription.template
    return _message(
        options,
        subscription,
        subject,
        {
            # A stable id per delivery lets mail systems drop a redelivered copy.
            "Message-ID": message_id(delivery_id),
            "X-Switchboard-Tweet-Id": one_line(routed.tweet.id, SUBJECT_LIMIT),
            "X-Switchboard-Delivery-Id": one_line(delivery_id, SUBJECT_LIMIT),
        },
        env.get_template(f"{name}.txt.j2").render(context),
        env.get_template(f"{name}.html.j2").render(context),
    )


def render_digest(
    items: list[RoutedTweet],
    count: int,
    subscription: Subscription,
    options: EmailConfig,
    digest_id: str,
    names: Mapping[str, str] | None = None,
) -> Message:
    """One email for a digest period: ``count`` tweets in all, ``items`` of them listed."""
    shown = [r.model_copy(update={"tweet": shown_tweet(r.tweet, TEXT_LIMIT)}) for r in items]
    context = {
        "items": shown, "count": count, "more": count - len(shown),
        "subscription": subscription.name, "names": dict(names or {}),
    }  # fmt: skip
    env = templates(options.templates_dir)
    return _message(
        options,
        subscription,
        f"{options.subject_prefix} digest for {subscription.name}: {count} tweets",
        {
            "Message-ID": message_id(digest_id),
            "X-Switchboard-Digest-Id": one_line(digest_id, SUBJECT_LIMIT),
        },
        env.get_template("digest.txt.j2").render(context),
        env.get_template("digest.html.j2").render(context),
    )


def _message(
    options: EmailConfig,
    subscription: Subscription,
    subject: str,
    headers: dict[str, str],
    text: str,
    html: str,
) -> Message:
    """multipart/alternative: the text, then the HTML. ``headers`` must be one line each."""
    message = MIMEMultipart("alternative")
    message["From"] = _addresses((options.sender,))
    message["To"] = _addresses(tuple(subscription.to))
    message["Subject"] = _header(one_line(subject, SUBJECT_LIMIT))
    for name, value in headers.items():
        message[name] = _header(value)
    message.attach(MIMEText(text, "plain", UTF8))  # type: ignore[arg-type]  # a Charset works
    message.attach(MIMEText(html, "html", UTF8))  # type: ignore[arg-type]
    return message


def _header(value: str) -> str | Header:
    """ASCII as it is; anything else as RFC 2047 encoded words, and so is ASCII that holds
    one (``=?``): a tweet's ``=?utf-8?b?4oCu?=`` would be decoded by the reader's mail client
    into the characters ``inert`` took out (a right-to-left override)."""
    return value if value.isascii() and "=?" not in value else Header(value, UTF8)


@lru_cache(maxsize=256)  # the same few configured addresses, in every email
def _addresses(addresses: tuple[str, ...]) -> str:
    """Configured addresses (``Name <a@b>`` or ``a@b``) as one header value; a non-ASCII
    display name is encoded."""
    return ", ".join(
        formataddr((one_line(name, SUBJECT_LIMIT), address), charset=UTF8)
        for name, address in getaddresses(list(addresses))
    )


def count_refused(subscription: str, refused: dict[str, str]) -> None:
    """Counts the recipients the relay refused while it took the email for the others, by
    whether the refusal was for now or for good (only the latter needs a person)."""
    later = len(refused_for_now(refused))
    for refusal, count in (("for_now", later), ("for_good", len(refused) - later)):
        if count:
            metrics.EMAIL_RECIPIENTS_REFUSED.labels(subscription, refusal).inc(count)


def refused_for_now(refused: dict[str, str]) -> list[str]:
    """Of the recipients a relay refused (address: its reply), those it may take later (4xx:
    greylisting, a full mailbox); a 5xx refusal is for good."""
    return [address for address, reply in refused.items() if reply.startswith("4")]


class SmtpMailer:
    """Up to ``settings.connections`` connections to the relay, each opened on first use, kept
    open and reopened when the server drops it. SMTP carries one message at a time per
    connection, so a burst is spread over them; the most recently used goes first, so a quiet
    stream keeps one connection open, not all of them.

    Deliveries run concurrently, and those waiting while connections are being opened share
    the outcome: when the attempts made meanwhile fail, they fail with that error at once
    (each then retries with backoff) instead of each trying in turn, a timeout apiece against
    a relay that accepts and never answers."""

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings
        self._connections = [_Connection(settings) for _ in range(settings.connections)]
        self._idle: asyncio.LifoQueue[_Connection] = asyncio.LifoQueue()
        for connection in self._connections:
            self._idle.put_nowait(connection)
        self._attempts_ended = 0
        self._failure: Exception | None = None  # of the last attempt, while none succeeded

    async def send(self, message: Message, recipients: list[str] | None = None) -> dict[str, str]:
        """Sends ``message`` (to ``recipients`` only, if given, else to its To); returns the
        recipients the relay refused (address: its reply) while it took the others. When it
        refuses all of them, aiosmtplib raises ``SMTPRecipientsRefused``."""
        ended = self._attempts_ended
        connection = await self._idle.get()
        try:
            if not connection.is_open():
                if self._attempts_ended != ended and self._failure is not None:
                    raise self._failure  # the relay failed those opened while this one waited
                await self._open(connection)
            return await connection.send(message, recipients)
        finally:
            self._idle.put_nowait(connection)

    async def _open(self, connection: _Connection) -> None:
        try:
            await connection.open()
        except Exception as exc:
            self._failure = exc
            raise
        else:
            self._failure = None
        finally:
            self._attempts_ended += 1

    async def close(self) -> None:
        """Quit every open connection (a later send opens one again)."""
        for connection in self._connections:
            await connection.close()


class _Connection:
    """One SMTP connection; used by one sender at a time (``SmtpMailer`` hands it out)."""

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings
        self._client: aiosmtplib.SMTP | None = None

    def is_open(self) -> bool:
        return self._client is not None and self._client.is_connected

    async def open(self) -> None:
        s = self.settings
        client = aiosmtplib.SMTP(
            hostname=s.host, port=s.port, timeout=s.timeout_s, use_tls=s.tls, start_tls=s.starttls
        )
        await client.connect()
        if s.username:
            password = s.password.get_secret_value() if s.password else ""
            try:
                await client.login(s.username, password)
            except BaseException:
                client.close()  # not left open behind a refused login
                raise
        self._client = client

    async def send(self, message: Message, recipients: list[str] | None) -> dict[str, str]:
        assert self._client is not None
        try:
            refused, _ = await self._client.send_message(message, recipients=recipients)
        except aiosmtplib.SMTPServerDisconnected:
            self._client = None
            raise
        return {address: f"{reply.code} {reply.message}" for address, reply in refused.items()}

    async def close(self) -> None:
        if self._client is not None and self._client.is_connected:
            try:
                await self._client.quit()
            except aiosmtplib.SMTPException:
                self._client.close()
        self._client = None
