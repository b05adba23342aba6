"""Hostile tweet text made inert (notify/sanitize.py), and what each channel builds from it."""

from __future__ import annotations

import json

import pytest

from switchboard.notify.channels import (
    CHAT_TEXT_LIMIT,
    JIRA_TEXT_LIMIT,
    SUMMARY_LIMIT,
    ZENDESK_HTML_LIMIT,
    Job,
    adf,
    zendesk_html,
)
from switchboard.notify.config import RedactConfig, Subscription
from switchboard.notify.sanitize import (
    CUT,
    chat,
    clip,
    html,
    inert,
    one_line,
    redact,
    redacted,
    shown_url,
    utf16_units,
    web_link,
)
from switchboard.shared.events import Author
from switchboard.shared.labels import Department
from tests.factories import HOSTILE, INVISIBLE, LONG_URL, a_classified_tweet, routed_from


def routed_with(text: str, name: str | None = None, username: str = "ana"):
    event = a_classified_tweet(
        "legal", 0.9, "high", text=text, author=Author(id="1", username=username, name=name)
    )
    return routed_from(event)


def job(text: str = HOSTILE, **author: str) -> Job:
    subscription = Subscription(name="s", channel="email", departments=["legal"], to=["a@b.cd"])
    return Job(routed_with(text, **author), subscription, Department.LEGAL, "d1")


# --- the pure functions ------------------------------------------------------------------------


def test_inert_removes_what_hides_or_reorders_text():
    shown = inert(HOSTILE)
    assert not any(ch in shown for ch in INVISIBLE)
    assert "zerowidth" in shown and "joiner" in shown and "tagfamily" not in shown
    assert "\U0001f468\u200d\U0001f469" in shown  # an emoji sequence keeps its joiner
    assert inert("pay\u200dpal pay\u200cpal \u200dx") == "paypal paypal x"  # joins nothing
    assert inert("\u0915\u094d\u200d\u0937 \u0645\u06cc\u200c\u062e") == (
        "\u0915\u094d\u200d\u0937 \u0645\u06cc\u200c\u062e"
    )  # Devanagari and Persian keep theirs
    assert "\u200f" in inert("\u05e9\u05dc\u05d5\u05dd\u200f!")  # a right-to-left mark stays


def test_inert_disarms_broadcast_mentions_but_not_people():
    shown = inert("@channel @HERE @everyone @all @\u200bhere @allison @channel_news @ana")
    assert "@channel " not in shown and "@HERE" not in shown and "@everyone" not in shown
    assert shown.count("\uff20") == 5
    assert "@allison" in shown and "@channel_news" in shown and "@ana" in shown


def test_line_breaks_become_newlines_and_one_line_has_none():
    assert inert("a\r\nb\rc\u2028d\u2029e\x85f\x0bg") == "a\nb\nc\nd\ne\nf\ng"
    line = one_line("subject\r\nBcc: victim@evil.example\u2028X: y", 200)
    assert line == "subject Bcc: victim@evil.example X: y"


def test_look_alike_hosts_show_as_punycode_and_long_links_are_shortened():
    assert shown_url("https://p\u0430ypal.com/login") == "https://xn--pypal-4ve.com/login"
    assert inert("see https://b\u00fccher.example/x?q=1").endswith(
        "https://xn--bcher-kva.example/x?q=1"
    )
    shortened = shown_url(LONG_URL)
    assert len(shortened) == 200 and shortened.startswith("https://evil.example/aaa")
    assert "…" in shortened
    assert inert(inert(HOSTILE)) == inert(HOSTILE)  # applying it twice changes nothing


def test_clip_says_it_cut():
    assert clip("short", 10) == "short"
    cut = clip("x" * 100, 50)
    assert len(cut) == 50 and cut.endswith("… [truncated]")
    assert len(one_line("y" * 300, 80)) == 80


def test_html_and_chat_escaping():
    assert str(html("<b>\"hi\"</b> & 'x'\nnext")) == (
        "&lt;b&gt;&#34;hi&#34;&lt;/b&gt; &amp; &#39;x&#39;<br>\nnext"
    )
    assert chat("<!channel> <@U1> a&b") == "&lt;!channel&gt; &lt;@U1&gt; a&amp;b"


@pytest.mark.parametrize(
    ("url", "kept"),
    [("https://x.com/ana/status/5", True), ("javascript:alert(1)", False),
     ('https://x.com/a" onclick="x', False), ("data:text/html,x", False)],
)  # fmt: skip
def test_only_web_links_are_links(url, kept):
    assert web_link(url) == (url if kept else "")


# --- redaction -----------------------------------------------------------------------------------

BOTH = RedactConfig(email_addresses=True, phone_numbers=True)


@pytest.mark.parametrize(
    "text",
    ["mail me at ana.lopez+air@mail.example.com", "call +44 20 7946 0958 now",
     "call (555) 123-4567", "ring 555.123.4567", "my number is 0033612345678",
     "whatsapp +33 6 12 34 56 78", "call 07700 900123",
     # invisible characters inside, which every channel removes (inert) once shown
     "mail me at jane@exam\u200bple.com", "call 020\u200b7946\u20600958 now"],
)  # fmt: skip
def test_redaction_hides_addresses_and_phone_numbers(text):
    shown = redact(text, BOTH)
    assert "[email]" in shown or "[phone]" in shown
    assert not any(ch.isdigit() for ch in shown) and "@mail" not in shown


@pytest.mark.parametrize(
    "text",
    ["flight QX 1234 on 2026-11-20 at 10:30", "https://x.com/ana/status/1862000000000000001",
     "order #123456789", "@ana_flies thanks", "gate 42, seat 17C", "price 1,299.00"],
)  # fmt: skip
def test_redaction_keeps_what_is_not_contact_data(text):
    assert redact(text, BOTH) == text


def test_redaction_is_off_by_default_and_covers_the_author_name():
    routed = routed_with("write to ana@mail.example", name="Ana ana@mail.example")
    assert redacted(routed, RedactConfig()) is routed
    only_mail = redacted(routed, RedactConfig(email_addresses=True))
    assert only_mail.tweet.text == "write to [email]"
    assert only_mail.tweet.author.name == "Ana [email]"
    assert routed.tweet.text == "write to ana@mail.example"  # the original is unchanged


# --- what each channel builds --------------------------------------------------------------------


def test_clip_by_utf16_units_counts_an_emoji_twice_and_never_splits_it():
    text = "😡" * 200
    assert utf16_units(text) == 400
    cut = clip(text, 255, measure=utf16_units)
    assert utf16_units(cut) <= 255 and cut.endswith(CUT) and set(cut[: -len(CUT)]) == {"😡"}
    assert clip("short", 255, measure=utf16_units) == "short"
    assert utf16_units(one_line("🙂 " * 100, 80, utf16_units)) <= 80


def test_summary_is_one_inert_line_within_the_limit():
    summary = job().summary()
    assert len(summary) <= SUMMARY_LIMIT and "\n" not in summary and "\r" not in summary
    assert not any(ch in summary for ch in INVISIBLE)


def test_body_keeps_the_text_as_plain_text_and_fits():
    body = job().body(JIRA_TEXT_LIMIT)
    assert "<script>alert(1)</script>" in body and "{{ 7*7 }}" in body  # shown, not evaluated
    assert "\uff20channel" in body and "@here" not in body
    assert not any(ch in body for ch in INVISIBLE) and "a" * 300 not in body
    huge = job("word " * 4_900).body(5_000)  # tweets are at most 25,000 characters
    assert len(huge) <= 5_000 and "… [truncated]" in huge and "Why: test" in huge


def test_zendesk_html_escapes_everything_and_fits():
    markup = zendesk_html(job())
    assert "<script" not in markup and "<img" not in markup and "&lt;script&gt;" in markup
    assert "&lt;!channel&gt;" in markup
    grown = zendesk_html(job("&" * 25_000))
    assert len(grown) <= ZENDESK_HTML_LIMIT and "truncated" in grown


def test_jira_document_has_only_literal_text():
    document = adf(job().body(JIRA_TEXT_LIMIT))
    nodes = [node for paragraph in document["content"] for node in paragraph["content"]]
    assert {node["type"] for node in nodes} == {"text"}
    assert all(set(node) == {"type", "text"} and node["text"] for node in nodes)  # no marks
    assert any("[~accountid:123]" in node["text"] for node in nodes)


def test_chat_text_pings_nobody():
    text = job().chat_text()
    assert "<!channel>" not in text and "<@U123ABC>" not in text and "@here" not in text
    assert "&lt;!channel&gt;" in text and "\uff20channel" in text
    assert len(job("z" * 10_000).chat_text()) < CHAT_TEXT_LIMIT + 300


def test_the_webhook_event_still_carries_the_exact_text():
    routed = routed_with(HOSTILE)
    payload = json.loads(json.dumps(routed.model_dump(mode="json")))
    assert payload["tweet"]["text"] == HOSTILE
