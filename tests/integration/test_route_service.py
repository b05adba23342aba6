"""The route service against the broker: primary topic, triage, alerts and dead letters."""

from __future__ import annotations

import base64

from switchboard.route.service import RouteService
from switchboard.route.settings import RouteSettings
from switchboard.shared import topics
from switchboard.shared.events import Alert, DeadLetter, RoutedTweet, decode, encode
from tests.conftest import CONFIG_FILE, readable
from tests.factories import a_classified_tweet

WATCHED = [*topics.PRIMARY_TOPICS, topics.ALERTS, topics.DEADLETTER]


async def test_route_publishes_each_tweet_once_and_dead_letters_garbage(
    kafka, producer, read, running
):
    settings = RouteSettings.load(config_file=CONFIG_FILE, kafka=kafka)
    threshold = settings.config.route.confidence_threshold
    confident = a_classified_tweet("legal", 0.9, "high", id="r-1", conversation_id="c-1")
    unsure = a_classified_tweet("sales", threshold - 0.1, "normal", id="r-2", conversation_id="c-2")
    critical = a_classified_tweet("it_security", 0.8, "critical", id="r-3", conversation_id="c-3")
    garbage = b'{"schema_version": 1, "event_type": "tweet.classified", "tweet": 7}'

    async with running(RouteService(settings)):
        for event in (confident, unsure, critical):
            await producer.send_and_wait(
                topics.CLASSIFIED, encode(event), key=event.tweet.conversation_id.encode()
            )
        await producer.send_and_wait(topics.CLASSIFIED, garbage, key=b"c-4")

        def done(records: list) -> bool:
            letters = [r for r in records if r.topic == topics.DEADLETTER]
            return (
                len(
                    [
                        r
                        for r in records
                        if r.topic in topics.PRIMARY_TOPICS and r.key.startswith(b"c-")
                    ]
                )
                >= 3
                and any(r.key == b"c-4" for r in letters)
                and any(r.topic == topics.ALERTS and r.key == b"c-3" for r in records)
            )

        records = await read(WATCHED, done)

    by_id = {}
    for record, routed in readable(records, RoutedTweet):
        if record.topic in topics.PRIMARY_TOPICS:
            by_id.setdefault(routed.tweet.id, []).append(record.topic)
    assert by_id["r-1"] == ["switchboard.dept.legal"]
    assert by_id["r-2"] == [topics.TRIAGE]
    assert by_id["r-3"] == ["switchboard.dept.it_security"]

    alerts = [
        decode(Alert, r.value) for r in records if r.topic == topics.ALERTS and r.key == b"c-3"
    ]
    assert [a.tweet.id for a in alerts] == ["r-3"] and alerts[0].kind == "critical_tweet"

    letter = next(
        decode(DeadLetter, r.value)
        for r in records
        if r.topic == topics.DEADLETTER and r.key == b"c-4"
    )
    assert letter.stage == "route" and letter.reason == "invalid_event"
    assert "tweet" in letter.error
    assert base64.b64decode(letter.original_base64) == garbage
    assert (letter.source_topic, letter.key) == (topics.CLASSIFIED, "c-4")


async def test_a_tweet_published_twice_upstream_is_routed_the_same_way_twice(
    kafka, producer, read, running
):
    """After a crash or a broker outage, classify may publish a tweet again, labelled otherwise
    (its batch differs) and into a conversation that now counts it: route repeats its first
    decision, so downstream deduplication by tweet id holds."""
    settings = RouteSettings.load(config_file=CONFIG_FILE, kafka=kafka)
    unsure = settings.config.route.confidence_threshold - 0.1
    first = a_classified_tweet("marketing", unsure, "low", id="twice-1", conversation_id="tw-1")
    second = a_classified_tweet("legal", 0.95, "critical", id="twice-1", conversation_id="tw-1")
    async with running(RouteService(settings)):
        for event in (first, second):
            await producer.send_and_wait(topics.CLASSIFIED, encode(event), key=b"tw-1")

        def done(records: list) -> bool:
            return len([r for r in records if r.key == b"tw-1" and r.topic != topics.ALERTS]) >= 2

        records = await read(WATCHED, done)
        # an alert published beside the second copy may land after it: look a while longer
        records += await read([topics.ALERTS], lambda rs: False, timeout_s=1.0)
    published = [(r.topic, routed.route) for r, routed in readable(records, RoutedTweet)
                 if r.key == b"tw-1"]  # fmt: skip
    assert [topic for topic, _ in published] == [topics.TRIAGE, topics.TRIAGE]
    assert published[0][1] == published[1][1]  # the same decision, reasons and all
    assert not [r for r in records if r.topic == topics.ALERTS and r.key == b"tw-1"]


async def test_an_alerted_tweet_published_again_otherwise_labelled_repeats_its_alert(
    kafka, producer, read, running
):
    """The copy classify publishes again may carry other labels (critical, then high): its
    alert is the first one again, same id, so whoever pages on alerts deduplicates it."""
    settings = RouteSettings.load(config_file=CONFIG_FILE, kafka=kafka)
    first = a_classified_tweet("it_security", 0.9, "critical", id="again-1", conversation_id="ag")
    second = a_classified_tweet("it_security", 0.9, "high", id="again-1", conversation_id="ag")
    async with running(RouteService(settings)):
        for event in (first, second):
            await producer.send_and_wait(topics.CLASSIFIED, encode(event), key=b"ag")
        records = await read(
            [topics.ALERTS], lambda rs: len([r for r in rs if r.key == b"ag"]) >= 2
        )
    alerts = [decode(Alert, r.value) for r in records if r.key == b"ag"]
    assert [a.alert_id for a in alerts] == ["critical_tweet:again-1"] * 2


async def test_an_edit_of_an_alerted_tweet_is_routed_without_a_second_alert(
    kafka, producer, read, running
):
    """X gives an edited post an id of its own: route routes the edit, and does not page again
    for the post whose alert it raised; another critical tweet of the conversation still
    alerts."""
    settings = RouteSettings.load(config_file=CONFIG_FILE, kafka=kafka)
    events = [
        a_classified_tweet("it_security", 0.9, "critical", id="ed-1", conversation_id="ed-c"),
        a_classified_tweet("it_security", 0.9, "critical", id="ed-2", conversation_id="ed-c",
                           edit_of="ed-1"),
        a_classified_tweet("it_security", 0.9, "critical", id="ed-3", conversation_id="ed-c"),
    ]  # fmt: skip
    async with running(RouteService(settings)):
        for event in events:
            await producer.send_and_wait(topics.CLASSIFIED, encode(event), key=b"ed-c")

        def done(records: list) -> bool:
            ours = [r for r in records if r.key == b"ed-c"]
            return (len([r for r in ours if r.topic in topics.PRIMARY_TOPICS]) >= 3
                    and len([r for r in ours if r.topic == topics.ALERTS]) >= 2)  # fmt: skip

        records = await read(WATCHED, done)

    alerts = [decode(Alert, r.value).tweet.id for r in records
              if r.topic == topics.ALERTS and r.key == b"ed-c"]  # fmt: skip
    assert alerts == ["ed-1", "ed-3"]
    routed = {t.tweet.id: t.route for r, t in readable(records, RoutedTweet) if r.key == b"ed-c"}
    assert routed["ed-2"].topic == "switchboard.dept.it_security" and not routed["ed-2"].escalated
    assert "an edit of tweet ed-1, whose alert was raised" in routed["ed-2"].reasons
