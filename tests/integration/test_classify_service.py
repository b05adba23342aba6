"""The classify service with the real model: labels every raw tweet; garbage is dead-lettered."""

from __future__ import annotations

import asyncio
import logging

import pytest

from switchboard.classify.data import content_sha256, load_labeled
from switchboard.classify.evaluation import report
from switchboard.classify.model import DEFAULT_ARTIFACT
from switchboard.classify.service import ClassifyService
from switchboard.classify.settings import ClassifySettings
from switchboard.shared import topics
from switchboard.shared.events import ClassifiedTweet, DeadLetter, decode, encode
from switchboard.shared.labels import Department, Urgency
from switchboard.shared.settings import ConfigError
from tests.conftest import CONFIG_FILE, LABELED, REAL, data_versions, published
from tests.factories import a_raw_tweet


def test_the_shipped_model_card_describes_it(tmp_path):
    import json

    card = json.loads((DEFAULT_ARTIFACT / "card.json").read_text())
    assert card["departments"] == [d.value for d in Department]
    assert card["urgencies"] == [u.value for u in Urgency]
    tuned = "LoRA-tuned" if card["options"]["lora_rank"] else "fully tuned"
    assert card["kind"].startswith(tuned), card["kind"]
    assert set(card["data"]) == {"labeled", "real"} and card["selected_on"] == "real/dev"
    # Every part (the encoder; the blend, calibration and figures, refitted by `classify blend`
    # after a relabeling) was fitted on a version of the data that main's history holds, so
    # every part can be retrained from the repository; the held-out split never changes.
    fitted = card["lexical"].get("data", card["data"])
    for name, folder in (("labeled", LABELED), ("real", REAL)):
        assert set(card["metrics"][name]) == {"dev", "test"}
        for split in ("train", "dev", "test"):
            path = folder / f"{split}.jsonl"
            versions = data_versions(path, tmp_path)
            for part in (fitted, card["data"]):
                assert part[name][split]["sha256"] in versions, (name, split)
        assert fitted[name]["test"]["sha256"] == content_sha256(folder / "test.jsonl"), name
    assert card["data"]["real"]["weight"] > card["data"]["labeled"]["weight"]
    assert card["languages"] == ["en"] and 0 < card["calibration"]["critical_threshold"] <= 0.6


def test_the_model_is_far_better_than_chance_on_the_dev_split(classifier):
    rows = load_labeled(LABELED / "dev.jsonl")
    predictions = classifier.predict([r.text for r in rows])
    scores = report(rows, [(p.department.value, p.urgency.value) for p in predictions])
    # Chance is 1/8 for departments and 1/4 for urgency.
    assert scores["department_accuracy"] > 0.6, scores
    assert scores["urgency_accuracy"] > 0.45, scores


def test_torch_buckets_give_each_tweet_its_own_scores(classifier):
    """The torch path sorts a batch into buckets too; scores come back in the tweets' order."""
    texts = [r.text for r in load_labeled(LABELED / "dev.jsonl")[:20]]
    alone = [classifier.predict([text])[0] for text in texts]
    together = classifier.predict(texts)
    assert classifier.bucket_size < len(texts)
    for one, many in zip(alone, together, strict=True):
        assert one.department == many.department
        for department, score in one.department_scores.items():
            assert abs(score - many.department_scores[department]) < 1e-4


def test_scores_are_probabilities(classifier):
    [prediction] = classifier.predict(["@SkylarkHelp my flight was cancelled and no one answers"])
    assert abs(sum(prediction.department_scores.values()) - 1) < 1e-4
    assert abs(sum(prediction.urgency_scores.values()) - 1) < 1e-4
    assert prediction.confidence == max(prediction.department_scores.values())


async def test_classify_labels_each_raw_tweet(kafka, producer, read, running, classifier, caplog):
    caplog.set_level(logging.INFO, logger="switchboard.classify.service")
    settings = ClassifySettings.load(config_file=CONFIG_FILE, kafka=kafka)
    texts = {
        "k-1": "@ParceloHelp my order #88231 never arrived and the app won't refund me",
        "k-2": "@SkylarkIR when is the Q3 earnings call? any guidance update?",
        "k-3": "@NorthwindBank got a text saying my account is locked, click bit.ly/x, is it you",
    }
    async with running(ClassifyService(settings, model=classifier)):
        for tweet_id, text in texts.items():
            event = a_raw_tweet(id=tweet_id, conversation_id=f"conv-{tweet_id}", text=text)
            await producer.send_and_wait(topics.RAW, encode(event), key=f"conv-{tweet_id}".encode())
        await producer.send_and_wait(topics.RAW, b"\x00\xff", key=b"conv-k-bad")
        records = await read(
            [topics.CLASSIFIED, topics.DEADLETTER],
            lambda rs: (
                {r.key for r in rs} >= {b"conv-k-1", b"conv-k-2", b"conv-k-3", b"conv-k-bad"}
            ),
        )

    classified = {
        event.tweet.id: event
        for event in published(records, topics.CLASSIFIED, ClassifiedTweet)
        if event.tweet.id in texts
    }
    assert set(classified) == set(texts)
    for event in classified.values():
        assert event.classification.model_version == classifier.version
        assert event.trace.classified_at >= event.trace.ingested_at
    assert classified["k-1"].classification.department == Department.CUSTOMER_SERVICE
    assert classified["k-2"].classification.department == Department.INVESTOR_RELATIONS
    assert classified["k-3"].classification.department == Department.IT_SECURITY
    [letter] = [decode(DeadLetter, r.value) for r in records if r.key == b"conv-k-bad"]
    assert letter.reason == "invalid_utf8" and letter.original() == b"\x00\xff"
    # At start classify says which model serves and whether it may be used commercially.
    [announced] = [r for r in caplog.records if getattr(r, "licence", None)]
    assert announced.model_version == classifier.version
    assert announced.licence == classifier.licence["spdx"] and announced.commercial_use is False


async def test_a_second_classify_process_takes_a_share_of_the_partitions(
    kafka, producer, read, running, classifier
):
    """Throughput scales by adding classify processes: a second one in the group gets some of
    the raw topic's partitions, and together they label every tweet once."""
    settings = ClassifySettings.load(config_file=CONFIG_FILE, kafka=kafka)
    first = ClassifyService(settings, model=classifier)
    second = ClassifyService(settings, model=classifier)
    async with running(first), running(second):
        partitions = settings.config.topics.partitions

        def shares() -> list[frozenset]:
            return [first.consumer.assignment(), second.consumer.assignment()]

        deadline = asyncio.get_running_loop().time() + 60
        while not (all(shares()) and sum(len(s) for s in shares()) == partitions):
            assert asyncio.get_running_loop().time() < deadline, shares()
            await asyncio.sleep(0.2)
        assert not shares()[0] & shares()[1]

        sent = {f"scale-{i}" for i in range(60)}
        for tweet_id in sorted(sent):
            event = a_raw_tweet(id=tweet_id, conversation_id=f"conv-{tweet_id}")
            await producer.send_and_wait(topics.RAW, encode(event), key=f"conv-{tweet_id}".encode())
        records = await read(
            [topics.CLASSIFIED],
            lambda rs: {r.key for r in rs} >= {f"conv-{i}".encode() for i in sent},
        )
    labelled = [
        e.tweet.id
        for e in published(records, topics.CLASSIFIED, ClassifiedTweet)
        if e.tweet.id in sent
    ]
    assert sorted(labelled) == sorted(sent)  # every tweet, none twice


async def test_an_artifact_folder_missing_where_classify_runs_fails_at_start_naming_the_key(
    kafka, tmp_path
):
    """A trained folder named by its path is only checked where classify runs: absent there,
    classify stops at start with the key and the shipped names, not with a traceback."""
    settings = ClassifySettings.load(config_file=CONFIG_FILE, kafka=kafka)
    options = settings.config.classify.model_copy(update={"artifact": str(tmp_path / "ours-v1")})
    config = settings.config.model_copy(update={"classify": options})
    service = ClassifyService(settings.model_copy(update={"config": config}))

    with pytest.raises(ConfigError, match=r"classify\.artifact: '.*ours-v1' is neither a shipped"):
        await service.start()


async def test_a_backbone_folder_that_is_no_model_fails_at_start_naming_the_key(kafka, tmp_path):
    """A mistyped classify.backbone: classify stops at start with the key and what the folder
    lacks, not with a FileNotFoundError from deep in the tokenizer."""
    settings = ClassifySettings.load(config_file=CONFIG_FILE, kafka=kafka)
    (tmp_path / "config.json").write_text("{}")
    options = settings.config.classify.model_copy(update={"backbone": str(tmp_path)})
    config = settings.config.model_copy(update={"classify": options})
    service = ClassifyService(settings.model_copy(update={"config": config}))

    with pytest.raises(ConfigError, match=r"classify\.backbone: .* is not a Hugging Face model "
                       r"folder \(no tokenizer\.json, special_tokens_map\.json\)"):  # fmt: skip
        await service.start()
