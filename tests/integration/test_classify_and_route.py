"""Classify and route running together on the broker, with the real model.

A tweet on a handle whose segment does not match still reaches the department its text calls
for; a tweet in a language the model does not support goes to triage, saying why.
"""

from __future__ import annotations

from switchboard.classify.service import ClassifyService
from switchboard.classify.settings import ClassifySettings
from switchboard.route.service import RouteService
from switchboard.route.settings import RouteSettings
from switchboard.shared import topics
from switchboard.shared.events import RoutedTweet, decode, encode
from switchboard.shared.labels import Department
from tests.conftest import CONFIG_FILE
from tests.factories import a_raw_tweet

MISMATCHED = {  # (handle, text, department the text calls for)
    "mm-1": (
        "@SkylarkDeals forget your promo, my flight SK221 was cancelled and nobody will "
        "rebook me or refund the ticket. 3 hours in the queue",
        Department.CUSTOMER_SERVICE,
    ),
    "mm-2": (
        "@SkylarkHelp as a shareholder: will the Q3 earnings call address the fuel hedging "
        "losses and is the dividend safe?",
        Department.INVESTOR_RELATIONS,
    ),
    "mm-3": (
        "@NorthwindJobs someone texted me a link 'northwind-secure-login.co' asking for my "
        "card PIN to unlock my account. is that you?? looks like phishing",
        Department.IT_SECURITY,
    ),
}


async def test_text_decides_the_department_and_unsupported_languages_go_to_triage(
    kafka, producer, read, running, classifier
):
    classify = ClassifyService(
        ClassifySettings.load(config_file=CONFIG_FILE, kafka=kafka), model=classifier
    )
    route = RouteService(RouteSettings.load(config_file=CONFIG_FILE, kafka=kafka))
    events = [
        a_raw_tweet(
            id=tweet_id,
            conversation_id=f"conv-{tweet_id}",
            text=text,
            lang="en",
            addressed_handles=[text.split()[0]],
        )
        for tweet_id, (text, _) in MISMATCHED.items()
    ]
    events.append(  # lang as X reports it
        a_raw_tweet(
            id="lang-ja",
            conversation_id="conv-lang-ja",
            text="@SkylarkHelp 預けた荷物が三日経っても届きません。予約番号はQX7H2Pです。",
            lang="ja",
        )
    )
    events.append(  # no lang (a replayed tweet): detected
        a_raw_tweet(
            id="lang-de",
            conversation_id="conv-lang-de",
            text="@ParceloHelp Mein Paket ist seit zwei Wochen nicht angekommen und niemand "
            "antwortet auf meine Nachrichten.",
            lang=None,
        )
    )
    events.append(  # X's code for a post of mentions only, and one for very short text
        a_raw_tweet(id="lang-qam", conversation_id="conv-lang-qam",
                    text="@SkylarkHelp @SkylarkDeals", lang="qam")
    )  # fmt: skip
    events.append(
        a_raw_tweet(id="lang-qst", conversation_id="conv-lang-qst",
                    text="@SkylarkHelp refund??", lang="qst")
    )  # fmt: skip
    wanted = {f"conv-{e.tweet.id}".encode() for e in events}
    async with running(classify), running(route):
        for event in events:
            await producer.send_and_wait(
                topics.RAW, encode(event), key=event.tweet.conversation_id.encode()
            )
        records = await read(
            list(topics.PRIMARY_TOPICS),
            lambda rs: {r.key for r in rs} >= wanted,
            timeout_s=90,
        )

    routed = {
        event.tweet.id: event
        for event in (decode(RoutedTweet, r.value) for r in records if r.key in wanted)
    }
    for tweet_id, (text, department) in MISMATCHED.items():
        decision = routed[tweet_id].route
        assert decision.department == department, (tweet_id, routed[tweet_id].classification)
        assert decision.topic == topics.department_topic(department), decision.reasons
        assert routed[tweet_id].tweet.addressed_handles == [text.split()[0]]
    for tweet_id, lang in (("lang-ja", "ja"), ("lang-de", "de")):
        event = routed[tweet_id]
        assert event.route.topic == topics.TRIAGE
        assert event.classification.lang == lang and not event.classification.language_supported
        assert f"language {lang} is not supported" in event.route.reasons[0]
    for tweet_id in ("lang-qam", "lang-qst"):  # no language: the model is let try
        event = routed[tweet_id]
        assert event.classification.language_supported, tweet_id
        assert not any("is not supported" in reason for reason in event.route.reasons)
