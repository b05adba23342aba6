"""The feedback loop with the services as separate processes: the model is changed in the YAML
file while tweets stream (no restart, nothing lost or labelled twice, each tweet names its
model), then a person corrects a routed tweet through route's REST endpoint and it reaches its
new department once."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from switchboard.classify.model import (
    COMMERCIAL_ARTIFACT_NAME,
    DEFAULT_ARTIFACT_NAME,
    DEFAULT_ONNX_DIR,
)
from switchboard.cli.load import write_load
from switchboard.cli.stack import Stack, StackOptions, scrape
from switchboard.shared import topics
from switchboard.shared.events import ClassifiedTweet, Correction, RoutedTweet
from tests.conftest import CONFIG_FILE, SAMPLES, SWITCHBOARD, published, read_topics
from tests.e2e.conftest import wait_settled

TWEETS, RATE = 800, 40.0  # 20 seconds of stream
LIVE, CANDIDATE = DEFAULT_ARTIFACT_NAME, COMMERCIAL_ARTIFACT_NAME
TOKEN = "e2e-admin-token"


def write_config(path: Path, artifact: str) -> None:
    config = yaml.safe_load(CONFIG_FILE.read_text())
    config["classify"] = {**config["classify"], "artifact": artifact, "reload_interval_s": 0.5}
    config["access"] = {"admin_token": {"env": "SB_E2E_ADMIN_TOKEN"}}
    path.write_text(yaml.safe_dump(config))


async def test_a_model_cutover_under_load_then_a_correction_lose_and_repeat_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "SMTP_HOST", "SMTP_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SB_E2E_ADMIN_TOKEN", TOKEN)
    config = tmp_path / "switchboard.yaml"
    write_config(config, LIVE)
    stack = Stack(StackOptions(workdir=tmp_path / "run", config_file=config, replay_file=None))
    load = tmp_path / "tweets.jsonl"
    sent = write_load(SAMPLES, TWEETS, load, 5_000_000_000_000_000_000 + time.time_ns() // 1000)
    # The candidate's int8 model is built ahead, as the image builds every shipped one: the
    # switch then costs a load of a second or so, where exporting it first on a busy machine
    # (torch loaded, the model exported and quantized) has outlasted the stream.
    build = [*SWITCHBOARD, "classify", "build-onnx", "--artifact", CANDIDATE, "--out",
             str(DEFAULT_ONNX_DIR)]  # fmt: skip
    await asyncio.to_thread(subprocess.run, build, check=True, capture_output=True)
    try:
        await stack.start()
        await stack.replay(load, RATE)
        await asyncio.sleep(2.0)
        write_config(config, CANDIDATE)  # the cutover, mid-stream
        async with httpx.AsyncClient(timeout=2.0) as client:

            async def candidate_serves() -> None:
                while True:
                    serving = await scrape(client, stack.ports["classify"],
                                           "switchboard_model_info", model_version=CANDIDATE,
                                           role="live")  # fmt: skip
                    if serving == 1.0:
                        return
                    await asyncio.sleep(0.5)

            await asyncio.wait_for(candidate_serves(), timeout=90)  # applied without a restart
        await wait_settled(stack, sent, 180)
        await asyncio.sleep(2)  # anything published late is counted too
        summary = stack.tally.summary(sent)
        duplicates = stack.tally.duplicates()

        classified = await read_topics(stack.kafka, [topics.CLASSIFIED], lambda rs: False, 3.0)
        versions: dict[str, list[str]] = {}
        for event in published(classified, topics.CLASSIFIED, ClassifiedTweet):
            versions.setdefault(event.tweet.id, []).append(event.classification.model_version)

        # A person moves one routed tweet to another department through route's endpoint.
        to_departments = ((i, t) for i, t in stack.tally.primary.items()
                          if i in sent and t[0].startswith(topics.DEPARTMENT_PREFIX))  # fmt: skip
        tweet_id, [topic] = next(to_departments)
        moved_from = topic.removeprefix(topics.DEPARTMENT_PREFIX)
        moved_to = "legal" if moved_from != "legal" else "sales"
        conversation = next(e.tweet.conversation_id
                            for e in published(classified, topics.CLASSIFIED, ClassifiedTweet)
                            if e.tweet.id == tweet_id)  # fmt: skip
        async with httpx.AsyncClient(timeout=10.0) as client:
            answer = await client.post(
                f"http://127.0.0.1:{stack.ports['route']}/feedback",
                json={"conversation_id": conversation, "tweet_id": tweet_id,
                      "department": moved_to, "by": "e2e"},
                headers={"authorization": f"Bearer {TOKEN}"},
            )  # fmt: skip
        assert answer.status_code == 202, answer.text
        watched = [topics.FEEDBACK, topics.department_topic(moved_to)]

        def corrected(records: list) -> list[RoutedTweet]:
            return [e for e in published(records, topics.department_topic(moved_to), RoutedTweet)
                    if e.tweet.id == tweet_id and e.correction is not None]  # fmt: skip

        await read_topics(stack.kafka, watched, lambda rs: bool(corrected(rs)), 60)
        records = await read_topics(stack.kafka, watched, lambda rs: False, 2.0)  # all of it
    finally:
        await stack.stop()

    assert summary["lost"] == 0 and duplicates == 0, summary
    ours = {i: v for i, v in versions.items() if i in sent}
    assert sorted(ours) == sorted(sent)  # every tweet classified...
    assert all(len(v) == 1 for v in ours.values())  # ...once
    labelled_by = {v[0] for v in ours.values()}
    assert labelled_by == {LIVE, CANDIDATE}, labelled_by  # the switch happened mid-stream
    corrections = [c for c in published(records, topics.FEEDBACK, Correction)
                   if c.tweet_id == tweet_id]  # fmt: skip
    assert [(c.department_before, c.department) for c in corrections] == [(moved_from, moved_to)]
    assert len(corrected(records)) == 1
