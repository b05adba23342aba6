"""Backfill from an X archive export (the "Download an archive of your data" zip or folder).

The archive is the account's own: ``data/account.js`` says who it is, ``data/tweets.js``
(``tweet.js`` in older exports, ``tweets-part1.js``... when large) holds its tweets, and
``data/direct-messages.js`` its DM conversations. Each file is JavaScript:
``window.YTD.<name>.part0 = [ ... ]``. For a company handle, its tweets are brand replies
(response times) and the DMs it received are inbound messages.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from switchboard.ingest.config import IngestFileConfig
from switchboard.ingest.normalize import NormalizeError, tweet_from_v1
from switchboard.shared.events import Author, Tweet


class ArchiveError(ValueError):
    """The path is not an X archive export."""


# What reading a zip member can raise besides BadZipFile: a compression zipfile cannot read
# (Deflate64, as Windows writes large archives), an encrypted member, corrupt data.
UNREADABLE_ZIP = (NotImplementedError, RuntimeError, zlib.error)


class Archive:
    def __init__(self, path: Path) -> None:
        self.path = path
        if path.is_dir():
            self._files = {p.relative_to(path).as_posix(): p.read_bytes for p in path.rglob("*.js")}
        elif zipfile.is_zipfile(path):
            archive = zipfile.ZipFile(path)
            self._files = {
                name: (lambda name=name: archive.read(name))
                for name in archive.namelist()
                if name.endswith(".js")
            }
        else:
            raise ArchiveError(f"{path}: neither a folder nor a zip file")
        self.account = self._account()

    def _parts(self, *stems: str) -> Iterator[dict[str, Any] | NormalizeError]:
        """The items of the data files named ``stems``; a file or an item that cannot be read
        is a NormalizeError in their place (dead-lettered with the reason, the rest goes on)."""
        for name in sorted(self._files):
            pure = PurePosixPath(name)
            if pure.parent.name == "data" and pure.stem.split("-part")[0] in stems:
                try:
                    items = _ytd(self._files[name](), name)
                except (ArchiveError, zipfile.BadZipFile, OSError, UnicodeDecodeError,
                        *UNREADABLE_ZIP) as exc:  # fmt: skip
                    yield NormalizeError("invalid_json", f"{name}: {exc}")
                    continue
                for index, item in enumerate(items):
                    yield (
                        item
                        if isinstance(item, dict)
                        else NormalizeError("invalid_event", f"{name}[{index}]: not an object")
                    )

    def _account(self) -> dict[str, Any]:
        for item in self._parts("account"):
            if isinstance(item, NormalizeError):
                raise ArchiveError(f"{self.path}: {item.detail}")
            account = item.get("account") or {}
            if isinstance(account, dict) and account.get("accountId") and account.get("username"):
                return account
        raise ArchiveError(f"{self.path}: no data/account.js with accountId and username")

    def tweets(self, config: IngestFileConfig) -> Iterator[Tweet | NormalizeError]:
        author = {
            "id_str": self.account["accountId"],
            "screen_name": self.account["username"],
            "name": self.account.get("accountDisplayName"),
        }
        for item in self._parts("tweets", "tweet"):
            if isinstance(item, NormalizeError):
                yield item
                continue
            try:
                yield tweet_from_v1(item.get("tweet") or item, config, "archive", author=author)
            except NormalizeError as problem:
                yield problem

    def direct_messages(self, config: IngestFileConfig) -> Iterator[Tweet | NormalizeError]:
        handle = config.handles_by_user_id.get(self.account["accountId"])
        if handle is None:
            return
        for item in self._parts("direct-messages"):
            if isinstance(item, NormalizeError):
                yield item
                continue
            conversation = item.get("dmConversation") or {}
            messages = conversation.get("messages") if isinstance(conversation, dict) else None
            if not isinstance(messages, list):
                yield NormalizeError(
                    "invalid_dm", f"a conversation without messages: {item!r:.200}"
                )
                continue
            for message in messages:
                create = message.get("messageCreate") if isinstance(message, dict) else None
                if isinstance(create, dict):
                    yield self._dm(create, conversation.get("conversationId"), handle.handle)
                elif not isinstance(message, dict) or create is not None:
                    yield NormalizeError("invalid_dm", f"not a message: {message!r:.200}")

    def _dm(self, create: dict, conversation_id: str | None, handle: str) -> Tweet | NormalizeError:
        sender = str(create.get("senderId", ""))
        own = sender == self.account["accountId"]
        try:
            return Tweet(
                id=str(create["id"]),
                conversation_id=conversation_id or str(create["id"]),
                text=create["text"],
                created_at=datetime.fromisoformat(create["createdAt"].replace("Z", "+00:00")),
                author=Author(id=sender, username=self.account["username"] if own else sender),
                addressed_handles=[handle],
                source="archive",
                kind="direct_message",
                url=f"https://x.com/messages/{conversation_id}",
            )
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            return NormalizeError("invalid_dm", f"direct message {create.get('id')}: {exc}")


def _ytd(content: bytes, name: str) -> list[Any]:
    """``window.YTD.tweets.part0 = [...]`` -> the list."""
    text = content.decode("utf-8-sig")
    _, sep, payload = text.partition("=")
    try:
        items = json.loads(payload if sep else text)
    except json.JSONDecodeError as exc:
        raise ArchiveError(f"{name}: not an archive data file: {exc}") from None
    if not isinstance(items, list):
        raise ArchiveError(f"{name}: expected a list")
    return items
