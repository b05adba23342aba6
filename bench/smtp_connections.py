"""Emails a second through notify's mailer against a relay of a given latency, on one connection
and on four: ``.venv/bin/python bench/smtp_connections.py``.

The relay is the loopback inbox, made to wait before it accepts each message (a relay across a
network, or one that scans what it is given); 200 emails are sent at once, as notify sends a
burst's deliveries.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from switchboard.cli.inbox import LoopbackInbox
from switchboard.notify.mail import SmtpMailer
from switchboard.notify.settings import SmtpSettings

EMAILS = 200


async def emails_per_s(port: int, connections: int) -> float:
    mailer = SmtpMailer(SmtpSettings(host="127.0.0.1", port=port, connections=connections))
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "a@example.com", "b@example.com", "hi"
    message.set_content("x" * 800)
    await mailer.send(message)  # the first connection, outside the timing
    started = time.perf_counter()
    await asyncio.gather(*(mailer.send(message) for _ in range(EMAILS)))
    rate = EMAILS / (time.perf_counter() - started)
    await mailer.close()
    return rate


def main() -> None:
    for latency_s in (0.0, 0.005, 0.02):
        inbox = LoopbackInbox(Path(tempfile.mkdtemp()) / "inbox")
        accept = inbox.handler.handle_DATA

        async def after_latency(
            *args: object, wait: float = latency_s, accept: Any = accept
        ) -> str:
            await asyncio.sleep(wait)
            return await accept(*args)

        inbox.handler.handle_DATA = after_latency  # type: ignore[method-assign]
        inbox.start()
        try:
            for connections in (1, 4):
                rate = asyncio.run(emails_per_s(inbox.port, connections))
                print(f"relay +{latency_s * 1000:.0f} ms a message, {connections} connection(s): "
                      f"{rate:.0f} emails/s")  # fmt: skip
        finally:
            inbox.stop()


if __name__ == "__main__":
    main()
