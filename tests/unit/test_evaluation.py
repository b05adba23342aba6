"""Evaluation figures on tiny inputs whose answers are worked out by hand."""

from __future__ import annotations

import pytest

from switchboard.classify.data import DataError, LabeledTweet, load_labeled, read_tweets
from switchboard.classify.evaluation import report
from switchboard.classify.language import detect
from switchboard.classify.model import decide_urgency
from switchboard.classify.tokens import prepare_text
from switchboard.shared.labels import Department, Urgency

D, U = Department, Urgency

GOLD = [
    LabeledTweet("a", D.CUSTOMER_SERVICE, U.HIGH),
    LabeledTweet("b", D.CUSTOMER_SERVICE, U.CRITICAL),
    LabeledTweet("c", D.SALES, U.NORMAL),
    LabeledTweet("d", D.LEGAL, U.CRITICAL),
]
PREDICTED = [
    ("customer_service", "high"),
    ("sales", "critical"),  # wrong department, right urgency
    ("sales", "normal"),
    ("legal", "high"),  # a missed critical
]


def test_report_figures_match_a_hand_computation():
    figures = report(GOLD, PREDICTED)
    assert figures["n"] == 4
    assert figures["department_accuracy"] == 0.75
    # customer_service: tp 1, fn 1 -> F1 2/3; sales: tp 1, fp 1 -> 2/3; legal: 1.0
    assert figures["department_macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3, abs=1e-4)
    assert figures["urgency_accuracy"] == 0.75
    assert figures["critical_recall"] == 0.5 and figures["critical_precision"] == 1.0
    assert figures["departments"]["sales"] == {
        "precision": 0.5,
        "recall": 1.0,
        "f1": 0.6667,
        "support": 1,
    }
    matrix = figures["department_confusion"]
    row = matrix["rows_gold_columns_predicted"][matrix["labels"].index("customer_service")]
    assert row[matrix["labels"].index("sales")] == 1 and sum(row) == 2
    assert figures["urgency_confusion"]["labels"] == [u.value for u in Urgency]


def test_report_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="4 gold rows but 1 predictions"):
        report(GOLD, PREDICTED[:1])


def test_a_bad_data_line_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"text": "ok", "department": "sales", "urgency": "low"}\n'
        '{"text": "x", "department": "finance", "urgency": "low"}\n'
    )
    with pytest.raises(DataError, match=r"bad.jsonl:2: ValueError: 'finance'"):
        read_tweets(path)


def test_training_rows_need_both_labels(tmp_path):
    path = tmp_path / "half.jsonl"
    path.write_text('{"id": "7", "text": "ok", "department": "sales"}\n')
    with pytest.raises(DataError, match="id 7"):
        load_labeled(path)


def test_critical_wins_when_it_clears_its_threshold_even_if_not_the_argmax():
    import torch

    urgencies = list(Urgency)
    probs = torch.zeros(len(urgencies))
    probs[urgencies.index(U.CRITICAL)] = 0.3
    probs[urgencies.index(U.HIGH)] = 0.6
    probs[urgencies.index(U.NORMAL)] = 0.1
    assert urgencies[decide_urgency(probs, urgencies, 0.25)] is U.CRITICAL
    assert urgencies[decide_urgency(probs, urgencies, 0.5)] is U.HIGH


def test_the_critical_threshold_trades_a_miss_for_four_false_alarms():
    import torch

    from switchboard.classify.train import f_beta, fit_critical_threshold

    assert f_beta(0.5, 1.0, beta=2.0) == pytest.approx(5 * 0.5 / (4 * 0.5 + 1))
    # P(critical) of six dev tweets; the first two are critical.
    p_critical = [0.9, 0.2, 0.15, 0.1, 0.1, 0.02]
    probs = torch.tensor([[p, 0.0, 1 - p, 0.0] for p in p_critical])  # critical, high, normal, low
    gold = [U.CRITICAL, U.CRITICAL, U.NORMAL, U.NORMAL, U.NORMAL, U.NORMAL]
    # At 0.2 both critical tweets are caught and nothing else: F2 = 1, the highest such threshold.
    assert fit_critical_threshold(probs, gold) == 0.2
    # When catching the second costs three false alarms, F2 still prefers it (0.71 > 0.56).
    probs[1, 0], probs[1, 2] = 0.1, 0.9
    assert fit_critical_threshold(probs, gold) == 0.1


def test_handles_and_links_are_masked_so_the_text_decides():
    assert prepare_text("@SkylarkDeals refund pls https://t.co/x1") == "@user refund pls http"


@pytest.mark.parametrize(
    ("text", "lang"),
    [
        ("@ParceloHelp Mi pedido no ha llegado y nadie responde a mis mensajes", "es"),
        ("@ParceloHelp Mein Paket ist seit einer Woche nicht angekommen", "de"),
        ("@SkylarkHelp 荷物が届きません。どうすればいいですか", "ja"),
        ("@SkylarkHelp my bag never arrived at LHR, booking QX7H2P, 3 days now", "en"),
        ("@SkylarkHelp lol", "und"),  # too short to tell: the model may try
    ],
)
def test_language_detection_for_tweets_without_lang(text, lang):
    assert detect(text) == lang
