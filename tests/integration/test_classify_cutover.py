"""Model cutover and rollback without a restart, and a shadow classify, against the embedded
broker with the real models: a change of ``classify.artifact`` under load loses and repeats no
tweet, each tweet names the model that labelled it, and a shadow candidate labels the same
tweets into its own topic, routing nothing."""

from __future__ import annotations

import asyncio
import shutil
from collections import defaultdict

import yaml

from switchboard.classify import metrics as classify_metrics
from switchboard.classify.model import (
    COMMERCIAL_ARTIFACT_NAME,
    DEFAULT_ARTIFACT_NAME,
    ENCODER_FILE,
    resolve_artifact,
)
from switchboard.classify.service import ClassifyService
from switchboard.classify.settings import ClassifySettings
from switchboard.shared import topics
from switchboard.shared.events import ClassifiedTweet, encode
from tests.conftest import CONFIG_FILE, readable, rejected, wait_for
from tests.factories import a_raw_tweet
from tests.integration.conftest import new_id

LIVE, CANDIDATE = DEFAULT_ARTIFACT_NAME, COMMERCIAL_ARTIFACT_NAME


def write_config(path, artifact: str) -> None:
    config = yaml.safe_load(CONFIG_FILE.read_text())
    config["classify"] = {**config["classify"], "artifact": artifact, "runtime": "torch",
                          "reload_interval_s": 0.2, "batch_size": 16,
                          "batch_timeout_ms": 5}  # fmt: skip
    path.write_text(yaml.safe_dump(config))


def labelled(records, run: str) -> list[tuple[int, int, str, str]]:
    """(partition, offset, tweet id, model version) of this run's tweets, in log order."""
    return sorted((r.partition, r.offset, e.tweet.id, e.classification.model_version)
                  for r, e in readable(records, ClassifiedTweet)
                  if r.topic == topics.CLASSIFIED and e.tweet.id.startswith(run))  # fmt: skip


async def test_a_new_artifact_takes_over_under_load_and_rolls_back(
    kafka, producer, read, running, tmp_path
):
    path = tmp_path / "switchboard.yaml"
    write_config(path, LIVE)
    service = ClassifyService(ClassifySettings.load(config_file=path, kafka=kafka))
    run, sent = new_id(), []

    async def offer(count: int) -> None:
        for _ in range(count):
            tweet_id = f"{run}-{len(sent)}"
            event = a_raw_tweet(id=tweet_id, conversation_id=tweet_id, text=f"tweet {tweet_id}")
            await producer.send(topics.RAW, encode(event), key=tweet_id.encode())
            sent.append(tweet_id)
            await asyncio.sleep(0.01)  # about 100 tweets a second

    applied_before = classify_metrics.MODEL_RELOADS.labels("applied")._value.get()  # noqa: SLF001
    async with running(service):
        await offer(100)
        write_config(path, CANDIDATE)  # the cutover, while tweets keep coming
        await offer(150)
        await wait_for(lambda: service.model.version == CANDIDATE, timeout_s=60)
        await offer(100)
        write_config(path, LIVE)  # the rollback: the same operation
        await offer(150)
        await wait_for(lambda: service.model.version == LIVE, timeout_s=60)
        await offer(50)
        records = await read(
            [topics.CLASSIFIED], lambda rs: len({t for _, _, t, _ in labelled(rs, run)}) >= 550
        )
        late = tmp_path / "late-artifact"
        write_config(path, str(late))  # a model that cannot load changes nothing
        failed = classify_metrics.MODEL_RELOADS.labels("failed")._value.get()  # noqa: SLF001
        await wait_for(
            lambda: classify_metrics.MODEL_RELOADS.labels("failed")._value.get() > failed  # noqa: SLF001
        )
        await asyncio.sleep(1.0)  # five more looks: not loaded again while nothing changed
        assert classify_metrics.MODEL_RELOADS.labels("failed")._value.get() == failed + 1  # noqa: SLF001
        assert service.model.version == LIVE
        assert rejected("classify") == 1  # the file on disk would fail a restart: said
        settle = await read([topics.CLASSIFIED], lambda rs: False, timeout_s=1.0)
        # An artifact the file named before it was there loads once it is whole (its files
        # changed). Its card and heads come first, its encoder weights last (as `aws s3 sync`
        # writes them): refused meanwhile, or the backbone's plain weights would serve under
        # the candidate's name until a restart.
        source = resolve_artifact(CANDIDATE)
        shutil.copytree(source, late, ignore=shutil.ignore_patterns(ENCODER_FILE))
        await wait_for(
            lambda: classify_metrics.MODEL_RELOADS.labels("failed")._value.get() > failed + 1  # noqa: SLF001
        )
        assert service.model.version == LIVE and rejected("classify") == 1
        shutil.copy(source / ENCODER_FILE, late / ENCODER_FILE)
        await wait_for(lambda: service.model.version == CANDIDATE, timeout_s=60)
        assert rejected("classify") == 0
        path.unlink()  # the file gone (a ConfigMap key renamed): a restart would fail
        await wait_for(lambda: rejected("classify") == 1)
        await asyncio.sleep(1.0)  # five more looks: still said, the model still serving
        assert rejected("classify") == 1 and service.model.version == CANDIDATE

    seen = labelled(settle, run)
    assert sorted(t for _, _, t, _ in seen) == sorted(
        sent
    )  # every tweet once: none lost, none twice
    versions = {version for *_, version in seen}
    assert versions == {LIVE, CANDIDATE}
    by_partition: dict[int, list[str]] = defaultdict(list)
    for partition, _, _, version in seen:
        by_partition[partition].append(version)
    for order in by_partition.values():  # each partition: live, then candidate, then live again
        changes = [v for i, v in enumerate(order) if i == 0 or v != order[i - 1]]
        assert changes in ([LIVE, CANDIDATE, LIVE], [LIVE, CANDIDATE], [LIVE]), changes
    # The rollback changed the labels, not only the name the service reports: what was offered
    # once it reported the live model again was labelled by it (a backlog offered before may
    # be labelled by either, as it is read before or after a switch).
    label = {t: version for _, _, t, version in seen}
    assert {label[t] for t in sent[500:550]} == {LIVE}
    assert len(records) >= 550
    applied = classify_metrics.MODEL_RELOADS.labels("applied")._value.get()  # noqa: SLF001
    assert applied - applied_before >= 2  # the counter is the process's: this test's own part


async def test_a_shadow_classify_labels_the_same_tweets_into_its_own_topic(
    kafka, producer, read, running, classifier, tmp_path
):
    """Live and shadow read the same raw tweets in their own groups; the shadow's labels go to
    switchboard.tweets.shadow only, and it counts how often the two models agree."""
    path = tmp_path / "switchboard.yaml"
    write_config(path, LIVE)
    live = ClassifyService(ClassifySettings.load(config_file=path, kafka=kafka), model=classifier)
    shadow = ClassifyService(ClassifySettings.load(
        config_file=path, kafka=kafka, shadow=True, shadow_artifact=CANDIDATE))  # fmt: skip
    run = new_id()
    ids = [f"{run}-{i}" for i in range(40)]
    before = a_raw_tweet(id=f"{run}-before", conversation_id=f"{run}-before",
                         text="@SkylarkHelp sent before the shadow started")  # fmt: skip
    await producer.send_and_wait(topics.RAW, encode(before), key=before.tweet.id.encode())
    async with running(live), running(shadow):
        assert shadow.model.version == CANDIDATE
        # A new shadow group starts at the end of the raw topic, as its reader of the live
        # labels does: both must stand there before the tweets come.
        await wait_for(lambda: bool(shadow.consumer.assignment()))
        for partition in shadow.consumer.assignment():
            await shadow.consumer.position(partition)
        await asyncio.sleep(1.0)
        for tweet_id in ids:
            event = a_raw_tweet(id=tweet_id, conversation_id=tweet_id,
                                text="@SkylarkHelp my refund never arrived")  # fmt: skip
            await producer.send_and_wait(topics.RAW, encode(event), key=tweet_id.encode())

        def ours(rs, topic):
            return {e.tweet.id for r, e in readable(rs, ClassifiedTweet)
                    if r.topic == topic and e.tweet.id.startswith(run)}  # fmt: skip

        records = await read(
            [topics.CLASSIFIED, topics.SHADOW],
            lambda rs: (
                ours(rs, topics.CLASSIFIED) - {before.tweet.id}
                == ours(rs, topics.SHADOW)
                == set(ids)
            ),
        )
        # a new shadow group labels from its start on, not the raw topic's retention
        assert before.tweet.id in ours(records, topics.CLASSIFIED)
        assert before.tweet.id not in ours(records, topics.SHADOW)
        compared = classify_metrics.SHADOW_COMPARED.labels(LIVE, CANDIDATE, "department", "true")
        disagreed = classify_metrics.SHADOW_COMPARED.labels(LIVE, CANDIDATE, "department", "false")
        await wait_for(lambda: compared._value.get() + disagreed._value.get() >= len(ids))  # noqa: SLF001
    versions = {(r.topic, e.classification.model_version) for r, e in readable(records,
                ClassifiedTweet) if e.tweet.id.startswith(run)}  # fmt: skip
    assert versions == {(topics.CLASSIFIED, LIVE), (topics.SHADOW, CANDIDATE)}
    assert shadow.name == "classify-shadow"  # its dead letters and metrics are its own
