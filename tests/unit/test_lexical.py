"""The lexical model (TF-IDF + logistic regression) and its blend with the encoder."""

from __future__ import annotations

import numpy as np

from switchboard.classify.lexical import LABELS, LexicalModel, blended

TEXTS = [
    "my order never arrived and support will not answer",
    "refund still missing after two weeks, order 4411",
    "is the premium plan cheaper if I pay yearly?",
    "do you offer a discount on the premium plan for teams?",
    "someone logged into my account and changed the password",
    "phishing email pretending to be you asks for my card",
]
DEPARTMENTS = ["customer_service", "customer_service", "sales", "sales", "it_security",
               "it_security"]  # fmt: skip
URGENCIES = ["normal", "normal", "low", "low", "critical", "critical"]


def fitted() -> LexicalModel:
    labels = {"department": DEPARTMENTS * 2, "urgency": URGENCIES * 2}
    return LexicalModel.fit(TEXTS * 2, labels, [1.0] * 12)


def test_a_saved_model_loads_with_the_same_logits(tmp_path):
    model = fitted()
    model.save(tmp_path)
    loaded = LexicalModel.load(tmp_path)
    probe = ["my account was hacked", "price of the premium plan", "order never arrived"]
    for label in LABELS:
        np.testing.assert_allclose(
            loaded.logits(probe)[label], model.logits(probe)[label], rtol=1e-5, atol=1e-5
        )


def test_logits_a_tweet_at_a_time_are_scikit_learns_over_the_batch(tmp_path):
    """Served logits come from scikit-learn's analyzers a tweet at a time (its transform has a
    fixed cost per call that micro-batches cannot pay); they must equal its own matrix's."""
    model = fitted()
    model.save(tmp_path)
    for served in (model, LexicalModel.load(tmp_path)):
        probe = [*TEXTS, "", "!!!", "  spaced   out  ", "ünïcödé order 4411 refund??", "a"]
        features = served.features(probe)
        logits = served.logits(probe)
        for label in LABELS:
            expected = features @ served.coefficients[label].T + served.intercepts[label]
            np.testing.assert_allclose(logits[label], expected, rtol=1e-4, atol=1e-4)


def test_it_learns_the_training_labels_and_never_predicts_an_absent_one():
    logits = fitted().logits(TEXTS)
    departments = [LABELS["department"][i] for i in logits["department"].argmax(-1)]
    assert departments == DEPARTMENTS
    absent = LABELS["department"].index("legal")  # no training row is legal
    assert (logits["department"][:, absent] < -1000).all()


def test_the_blend_is_a_weighted_mean_sharpened_by_its_temperature():
    encoder = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3]])
    lexical = np.array([[0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
    assert blended(encoder, lexical, 0.0) is encoder  # weight 0: the encoder alone
    np.testing.assert_allclose(blended(encoder, lexical, 1.0), lexical)
    mean = blended(encoder, lexical, 0.5)
    np.testing.assert_allclose(mean, (encoder + lexical) / 2)
    sharper = blended(encoder, lexical, 0.5, temperature=0.5)
    np.testing.assert_allclose(sharper.sum(-1), 1.0)
    assert (sharper.argmax(-1) == mean.argmax(-1)).all()
    assert (sharper.max(-1) > mean.max(-1)).all()
