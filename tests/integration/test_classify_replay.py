"""Replay against the embedded broker with the real model: a past time range of the raw topic,
found by the broker's time index, is labelled into the shadow topic and nothing else; then
``compare`` reads the live labels, the candidate's and the corrections back by time."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import httpx

from switchboard.classify.replay import replay
from switchboard.route.service import RouteService
from switchboard.route.settings import RouteSettings
from switchboard.shared import topics
from switchboard.shared.comparison import compare, read_since
from switchboard.shared.events import ClassifiedTweet, Correction, encode
from tests.conftest import CONFIG_FILE, read_topics, readable
from tests.factories import a_classified_tweet, a_raw_tweet


async def test_a_time_range_is_relabelled_into_the_shadow_topic_only(
    own_kafka, own_producer, classifier, tmp_path
):
    now = datetime.now(UTC)
    at = {"old": now - timedelta(hours=3), "range": now - timedelta(hours=1), "new": now}
    for period, when in at.items():  # in order of time, as a topic holds them
        if period == "range":  # not a raw tweet: skipped, not labelled
            await own_producer.send_and_wait(topics.RAW, b"not a tweet", key=b"x",
                                             timestamp_ms=int(when.timestamp() * 1000))  # fmt: skip
        for i in range(6):
            tweet_id = f"{period}-{i}"
            event = a_raw_tweet(id=tweet_id, conversation_id=tweet_id,
                                text="@SkylarkHelp my refund never arrived")  # fmt: skip
            await own_producer.send_and_wait(topics.RAW, encode(event), key=tweet_id.encode(),
                                             timestamp_ms=int(when.timestamp() * 1000))  # fmt: skip
    report = await replay(own_kafka, classifier, now - timedelta(hours=2),
                          now - timedelta(minutes=30), batch_size=4)  # fmt: skip

    assert (report.labelled, report.skipped) == (6, 1)
    watched = [topics.SHADOW, topics.CLASSIFIED, *topics.PRIMARY_TOPICS]
    records = await read_topics(own_kafka, watched, lambda rs: len(rs) >= 6)
    records += await read_topics(own_kafka, watched, lambda rs: False, timeout_s=1.0)
    assert {r.topic for r in records} == {topics.SHADOW}  # nothing classified live, nothing routed
    labelled = {e.tweet.id for _, e in readable(records, ClassifiedTweet)}
    assert labelled == {f"range-{i}" for i in range(6)}

    # The live model's labels and a correction, as classify and route publish them; compare
    # reads them back by time and judges the candidate (here the same model) against both.
    for i in range(6):
        live = a_classified_tweet("sales", 0.7, "normal", id=f"range-{i}",
                                  conversation_id=f"range-{i}")  # fmt: skip
        await own_producer.send_and_wait(
            topics.CLASSIFIED, encode(live), key=live.tweet.id.encode()
        )
    correction = Correction(
        correction_id="ops:1", conversation_id="range-0", tweet_id="range-0", source="ops",
        by="ana", made_at=now, outcome="rerouted", department="customer_service",
        urgency=None, model_version="t",
    )  # fmt: skip
    await own_producer.send_and_wait(topics.FEEDBACK, encode(correction), key=b"range-0")
    found = await read_since(own_kafka, now - timedelta(hours=2))
    result = compare(found[topics.CLASSIFIED], found[topics.SHADOW], found[topics.FEEDBACK])
    (candidate,) = result["candidates"]
    assert candidate["model_version"] == classifier.version and candidate["compared"] == 6
    assert candidate["department_agreement"] == 0.0  # the stand-in live labels said sales
    assert candidate["on_corrected"]["candidate"]["department_accuracy"] == 1.0
    assert candidate["on_corrected"]["live"]["department_accuracy"] == 0.0
    assert candidate["disagreements"][0]["live"] == "sales"
    # Live traffic since, far more than the replay labelled: the live labels of the replayed
    # tweets are still found, whatever the limit on what is read.
    for i in range(60):
        other = a_classified_tweet("sales", 0.7, "normal", id=f"traffic-{i}",
                                   conversation_id=f"traffic-{i}")  # fmt: skip
        await own_producer.send_and_wait(
            topics.CLASSIFIED, encode(other), key=other.tweet.id.encode()
        )
    found = await read_since(own_kafka, now - timedelta(hours=2), limit=60)
    assert {e.tweet.id for e in found[topics.CLASSIFIED]} >= {f"range-{i}" for i in range(6)}
    assert compare(found[topics.CLASSIFIED], found[topics.SHADOW],
                   found[topics.FEEDBACK])["candidates"][0]["compared"] == 6  # fmt: skip

    # The same through the commands an operator runs (in a thread: each runs its own loop).
    from click.testing import CliRunner

    from switchboard.cli import main

    # the int8 model where SWITCHBOARD_ONNX_DIR says, as the image keeps it
    env = {"KAFKA_BOOTSTRAP_SERVERS": own_kafka.bootstrap_servers,
           "SWITCHBOARD_ONNX_DIR": str(tmp_path)}  # fmt: skip

    def command(*args: str):  # noqa: ANN202
        return asyncio.to_thread(CliRunner().invoke, main, ["classify", *args], env=env)

    replayed = await command("replay", "--from", "2h", "--to", "30m", "--json")
    assert replayed.exit_code == 0, replayed.output
    assert json.loads(replayed.output.splitlines()[-1])["labelled"] == 6
    assert list(tmp_path.glob("*.onnx")), "replay did not serve from SWITCHBOARD_ONNX_DIR"
    compared = await command("compare", "--since", "3h", "--json")
    assert compared.exit_code == 0, compared.output
    (again,) = json.loads(compared.output.splitlines()[-1])["candidates"]
    assert again["tweets"] == 6 and again["compared"] == 6  # the same tweets, labelled twice
    table = await command("compare", "--since", "3h")
    assert "department accuracy on corrected" in table.output and "sales ->" in table.output

    # The ops page shows the same comparison (route serves it, reading the topics back).
    route = RouteService(RouteSettings.load(config_file=CONFIG_FILE, kafka=own_kafka))
    transport = httpx.ASGITransport(app=route.http_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://route") as client:
        answer = await client.get("/ops/compare", params={"hours": 3})
        page = await client.get("/ops")
    assert answer.status_code == 200, answer.text
    (shown,) = answer.json()["candidates"]
    assert shown["compared"] == 6 and shown["on_corrected"]["candidate"]["department_accuracy"] == 1
    assert 'id="compare"' in page.text and "/ops/compare" in page.text


async def test_exported_feedback_leaves_out_tweets_their_authors_deleted(
    own_kafka, own_producer, tmp_path
):
    from click.testing import CliRunner

    from switchboard.classify.feedback import read_file
    from switchboard.cli import main
    from switchboard.shared.events import ComplianceEvent
    from tests.factories import a_tweet

    now = datetime.now(UTC)
    for tweet_id in ("kept-1", "deleted-1"):
        correction = Correction(
            correction_id=f"ops:{tweet_id}", conversation_id=tweet_id, tweet_id=tweet_id,
            source="ops", by="ana", made_at=now, outcome="rerouted", department="legal",
            urgency="high", model_version="t", tweet=a_tweet(id=tweet_id, conversation_id=tweet_id),
        )  # fmt: skip
        await own_producer.send_and_wait(topics.FEEDBACK, encode(correction), key=tweet_id.encode())
    deletion = ComplianceEvent(tweet_id="deleted-1", event_at=now, source="filtered_stream")
    await own_producer.send_and_wait(topics.COMPLIANCE, encode(deletion), key=b"deleted-1")

    out = tmp_path / "corrections.jsonl"
    env = {"KAFKA_BOOTSTRAP_SERVERS": own_kafka.bootstrap_servers}
    command = ["classify", "export-feedback", "--out", str(out)]
    done = await asyncio.to_thread(CliRunner().invoke, main, command, env=env)
    assert done.exit_code == 0, done.output
    assert [c.tweet_id for c in read_file(out)] == ["kept-1"]
