"""Email notifications: rendering (pure) and sending over SMTP (aiosmtplib).

Tweet text is untrusted. Templates see it made inert (sanitize.py) and only as a value, never
as template source; the HTML body is autoescaped; header values are one line (sanitize.one_line),
so that a tweet can never add a header.
"""

from __future__ import annotations

import logging
import re
from email.message import EmailMessage
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
    select_autoescape,
)

from switchboard.notify.sanitize import one_line, shown_tweet
from switchboard.notify.settings import SmtpSettings
from switchboard.shared.config import EmailConfig, Subscription
from switchboard.shared.events import RoutedTweet
from switchboard.shared.settings import ConfigError

log = logging.getLogger(__name__)

SUBJECT_LIMIT = 200
TEXT_LIMIT = 32_000  # of a tweet in an email; a long post holds up to 25,000


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
    """Fail at start, naming the subscription, when an email template does not exist."""
    env = templates(options.templates_dir)
    for index, subscription in enumerate(subscriptions):
        if subscription.channel != "email":
            continue
        for suffix in ("txt.j2", "html.j2"):
            try:
                env.get_template(f"{subscription.template}.{suffix}")
            except TemplateNotFound:
                raise ConfigError(
                    f"config key notify.subscriptions[{index}].template: no template "
                    f"{subscription.template}.{suffix} (built in, or in notify.email.templates_dir)"
                ) from None


def message_id(delivery_id: str) -> str:
    """The same Message-ID every time a delivery is sent, so that mail systems drop a copy sent
    again after a crash (``email.utils.make_msgid`` adds the time and a random number)."""
    local = re.sub(r"[^A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]", ".", delivery_id.replace(":", "."))
    return f"<{local}@switchboard>"


def render_email(
    routed: RoutedTweet, subscription: Subscription, options: EmailConfig, delivery_id: str
) -> EmailMessage:
    c = routed.classification
    context = {
        "tweet": shown_tweet(routed.tweet, TEXT_LIMIT),
        "classification": c,
        "route": routed.route,
        "department": c.department.value,
        "urgency": c.urgency.value,
        "subscription": subscription.name,
    }
    message = EmailMessage()
    message["From"] = options.sender
    message["To"] = ", ".join(subscription.to)
    message["Subject"] = one_line(
        f"{options.subject_prefix} {c.urgency.value.upper()} {c.department.value}: "
        f"@{routed.tweet.author.username}: {routed.tweet.text}",
        SUBJECT_LIMIT,
    )
    # A stable id per delivery lets mail systems drop a redelivered copy.
    message["Message-ID"] = message_id(delivery_id)
    message["X-Switchboard-Tweet-Id"] = one_line(routed.tweet.id, SUBJECT_LIMIT)
    message["X-Switchboard-Delivery-Id"] = one_line(delivery_id, SUBJECT_LIMIT)
    env = templates(options.templates_dir)
    name = subscription.template
    message.set_content(env.get_template(f"{name}.txt.j2").render(context))
    message.add_alternative(env.get_template(f"{name}.html.j2").render(context), subtype="html")
    return message


def render_digest(
    items: list[RoutedTweet], subscription: Subscription, options: EmailConfig, digest_id: str
) -> EmailMessage:
    """One email listing ``items`` (the low-urgency tweets of a digest window)."""
    shown = [r.model_copy(update={"tweet": shown_tweet(r.tweet, TEXT_LIMIT)}) for r in items]
    context = {"items": shown, "subscription": subscription.name}
    message = EmailMessage()
    message["From"] = options.sender
    message["To"] = ", ".join(subscription.to)
    message["Subject"] = one_line(
        f"{options.subject_prefix} digest for {subscription.name}: {len(items)} tweets",
        SUBJECT_LIMIT,
    )
    message["Message-ID"] = message_id(digest_id)
    message["X-Switchboard-Digest-Id"] = one_line(digest_id, SUBJECT_LIMIT)
    env = templates(options.templates_dir)
    message.set_content(env.get_template("digest.txt.j2").render(context))
    message.add_alternative(env.get_template("digest.html.j2").render(context), subtype="html")
    return message


class SmtpMailer:
    """One SMTP connection, opened on first use and reopened when the server drops it."""

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings
        self._client: aiosmtplib.SMTP | None = None

    async def _connected(self) -> aiosmtplib.SMTP:
        if self._client is None or not self._client.is_connected:
            s = self.settings
            client = aiosmtplib.SMTP(
                hostname=s.host,
                port=s.port,
                timeout=s.timeout_s,
                use_tls=s.tls,
                start_tls=s.starttls,
            )
            await client.connect()
            if s.username:
                password = s.password.get_secret_value() if s.password else ""
                await client.login(s.username, password)
            self._client = client
        return self._client

    async def send(self, message: EmailMessage) -> None:
        client = await self._connected()
        try:
            await client.send_message(message)
        except aiosmtplib.SMTPServerDisconnected:
            self._client = None
            raise

    async def close(self) -> None:
        if self._client is not None and self._client.is_connected:
            try:
                await self._client.quit()
            except aiosmtplib.SMTPException:
                self._client.close()
        self._client = None
