"""The ingest service: publishes every tweet addressed to the company's handles, once.

Sources here: replay of a JSONL file of X API v2 tweets. Each tweet becomes a RawTweet on
``switchboard.tweets.raw``, keyed by conversation id; a repeated tweet id is dropped; a line that
is not a tweet goes to ``switchboard.deadletter`` with the reason and the original bytes.
"""

from __future__ import annotations

import asyncio
import json
import logging

from switchboard.ingest.normalize import NormalizeError, SeenTweets, tweet_from_v2
from switchboard.ingest.replay import paced_lines
from switchboard.ingest.settings import IngestSettings
from switchboard.shared import metrics, topics
from switchboard.shared.events import DeadLetter, DecodeError, RawTweet, Trace, TweetSource, utc_now
from switchboard.shared.kafka import Output, ensure_topics, make_producer, publish
from switchboard.shared.runtime import run_service

log = logging.getLogger(__name__)


class IngestService:
    name = "ingest"

    def __init__(self, settings: IngestSettings) -> None:
        self.settings = settings
        self.config = settings.config
        self.seen = SeenTweets(self.config.ingest.dedup_capacity)
        self.producer = make_producer(settings.kafka, client_id="switchboard-ingest")
        self._ready = False

    @property
    def ready(self) -> bool:
        return self._ready

    async def start(self) -> None:
        await ensure_topics(
            self.settings.kafka,
            [topics.RAW, topics.DEADLETTER],
            self.config.topics.partitions,
            self.config.topics.replication_factor,
        )
        await self.producer.start()
        self._ready = True

    async def run(self, stop: asyncio.Event) -> None:
        if self.settings.replay_file is not None:
            await self.replay(stop)
        await stop.wait()

    async def replay(self, stop: asyncio.Event) -> None:
        path = self.settings.replay_file
        assert path is not None
        log.info("replay started", extra={"file": str(path), "rate_per_s": self.settings.rate})
        published = 0
        async for number, line in paced_lines(path, self.settings.rate, self.settings.replay_limit):
            if stop.is_set():
                break
            output = self.accept(line, "replay", where=f"{path.name}:{number}")
            if output is not None:
                await publish(self.producer, [output], self.name)
                published += 1
        log.info("replay finished", extra={"file": str(path), "published": published})

    def accept(self, line: bytes, source: TweetSource, where: str) -> Output | None:
        """The message to publish for one raw line: a RawTweet, a dead letter, or None (repeat)."""
        try:
            tweet = tweet_from_v2(_parse_json(line), self.config, source)
        except (NormalizeError, DecodeError) as problem:
            metrics.DEAD_LETTERS.labels(self.name, problem.reason).inc()
            log.warning(
                "dead-lettered an input line", extra={"where": where, "reason": problem.reason}
            )
            letter = DeadLetter.of(self.name, DecodeError(problem.reason, problem.detail), line)
            return Output.of(topics.DEADLETTER, letter, key=None)
        if not self.seen.first_time(tweet.id):
            metrics.DUPLICATES_DROPPED.labels(source).inc()
            return None
        metrics.TWEETS_INGESTED.labels(source).inc()
        event = RawTweet(tweet=tweet, trace=Trace(ingested_at=utc_now()))
        return Output.of(topics.RAW, event, key=tweet.conversation_id)

    async def close(self) -> None:
        self._ready = False
        await self.producer.stop()


def _parse_json(line: bytes) -> object:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError("invalid_utf8", str(exc)) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DecodeError("invalid_json", str(exc)) from None


def main(**overrides: object) -> None:
    """Run the ingest service until SIGTERM or SIGINT; ``overrides`` replace settings."""
    settings = IngestSettings.load(**overrides)
    asyncio.run(run_service(IngestService, settings))
