"""A loopback SMTP server that keeps every message in a Maildir: the inbox of ``switchboard run``.

Real SMTP (aiosmtpd), so notify talks to it exactly as it would to the company's mail relay.
"""

from __future__ import annotations

import itertools
import mailbox
import os
import time
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from switchboard.shared.broker import free_port


class _MaildirHandler:
    """Delivers each message the Maildir way (written in tmp/, renamed into new/), but without
    the fsync of ``mailbox.Maildir.add``: a loopback inbox has nothing to keep across a power
    cut, and those fsyncs were a fifth of the benchmark's measuring process (profiled at 200
    tweets/s), on the cores the services share."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sequence = itertools.count()
        self.refused: dict[str, str] = {}  # address: the reply that refuses it at RCPT

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list
    ) -> str:
        if address.lower() in self.refused:
            return self.refused[address.lower()]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        name = f"{time.time_ns()}.{os.getpid()}_{next(self.sequence)}.switchboard"
        written = self.path / "tmp" / name
        host, port = session.peer[:2]
        # Which connection it came on, as aiosmtpd's own Message handler says it, and whom the
        # envelope named (as a mail store's X-Original-To): the headers' To lists everyone
        # the email is for, the envelope only those it was sent to this time.
        trace = (
            f"X-Peer: {host}:{port}\r\nX-Envelope-To: {', '.join(envelope.rcpt_tos)}\r\n"
        ).encode()
        written.write_bytes(trace + (envelope.original_content or envelope.content))
        written.rename(self.path / "new" / name)
        return "250 Message accepted for delivery"


class LoopbackInbox:
    """``start()`` listens on 127.0.0.1; ``messages()`` reads what arrived."""

    def __init__(self, maildir: Path, port: int | None = None) -> None:
        self.path = Path(maildir)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.maildir = mailbox.Maildir(str(self.path), create=True)
        self.port = port or free_port()
        self.handler = _MaildirHandler(self.path)
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)

    def start(self) -> None:
        self.controller.start()

    def refuse(self, address: str, reply: str = "550 5.1.1 No such mailbox here") -> None:
        """Refuse ``address`` at RCPT with ``reply``, as a relay does a mailbox it does not
        know (5xx) or cannot take mail for now (4xx)."""
        self.handler.refused[address.lower()] = reply

    def accept(self, address: str) -> None:
        """Take mail for ``address`` again."""
        self.handler.refused.pop(address.lower(), None)

    def stop(self) -> None:
        self.controller.stop()

    def restart(self) -> None:
        """Listen again on the same port after ``stop()`` (a mail outage ends)."""
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def messages(self) -> list[EmailMessage]:
        return [message for _, message in self.arrivals()]

    def arrivals(self) -> list[tuple[float, EmailMessage]]:
        """Each message with the time it was accepted (``time.time()``'s clock), oldest first:
        the Maildir name begins with it."""
        found = []
        for key in self.maildir.iterkeys():
            with self.maildir.get_file(key) as raw:
                message = message_from_bytes(raw.read(), policy=policy.default)
            found.append((int(key.split(".", 1)[0]) / 1e9, message))
        return sorted(found, key=lambda arrival: arrival[0])
