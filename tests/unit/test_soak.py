"""Soak verdicts: does memory or lag grow between the second and the last quarter of a run?"""

from __future__ import annotations

import pytest

from switchboard.cli.config import PipelineSettings
from switchboard.cli.soak import (
    FAULT_MEMORY_MINUTES,
    SoakRecord,
    quarters,
    soak_config,
    soak_passed,
)
from tests.conftest import CONFIG_FILE


def test_quarters_are_medians_of_the_second_and_last_quarter():
    assert quarters([100.0] * 4 + [1.0, 2.0, 3.0, 4.0] + [9.0] * 4 + [5.0, 6.0, 7.0, 8.0]) == (
        2.5,
        6.5,
    )
    assert quarters([]) == (0.0, 0.0)


def test_flat_memory_after_warm_up_is_stable_and_a_leak_is_not():
    warm_then_flat = [50.0, 300.0] + [400.0] * 18
    leaking = [400.0 + 10 * n for n in range(20)]
    growth = SoakRecord(rss={"classify": warm_then_flat, "route": leaking}).memory_growth()
    assert growth["classify"] == 0.0
    assert growth["route"] > 0.1


def test_lag_that_drains_is_stable_and_lag_that_builds_up_is_not():
    rate = 100.0
    assert SoakRecord(lag=[0, 40, 120, 30, 10, 60, 20, 0]).lag_stable(rate)
    assert not SoakRecord(lag=[0, 100, 300, 600, 900, 1200, 1500, 1800]).lag_stable(rate)
    assert not SoakRecord(lag=[]).lag_stable(rate)
    assert not SoakRecord(lag=[0, 10, 10, 10], end_lag=2000).lag_stable(rate)


def test_the_broker_is_reported_but_not_judged():
    record = SoakRecord(rss={"broker": [100.0 + 50 * n for n in range(20)], "route": [80.0] * 20})
    assert record.memory_growth()["broker"] > 1 and record.memory_stable()
    record.rss["route"] = [80.0 + 5 * n for n in range(20)]
    assert not record.memory_stable()


def test_the_soak_configuration_makes_entries_expire_within_the_run(tmp_path):
    out = soak_config(CONFIG_FILE, tmp_path / "soak.yaml", expiry_hours=0.02)
    config = PipelineSettings.load(config_file=out).config  # still a valid configuration
    assert config.route.conversations.ttl_hours == 0.02
    assert config.notify.ledger_retention_hours == 0.02
    assert config.route.sla.check_interval_s <= 10
    # a redrive finds its channel's circuit closed again, not parked once more
    assert config.notify.delivery.circuit_cooldown_s < config.notify.delivery.redrive_after_s
    # its SLAs end before its conversations are forgotten, or none would alert
    assert max(config.route.sla.minutes.values()) <= 0.02 * 60 / 2
    assert config.ingest.dedup_window_hours == 0.02
    assert config.ingest.x.webhook.max_event_age_hours <= 0.02
    digests = [s.digest_minutes for s in config.notify.subscriptions if s.digest_minutes]
    assert digests and all(minutes == 0.02 * 60 for minutes in digests)
    assert config.handles == PipelineSettings.load(config_file=CONFIG_FILE).config.handles


def test_with_faults_decisions_and_effects_outlast_a_restart(tmp_path):
    """A record read again after a restart must still find its tweet's decision and its
    effect's record: a follow-up routed anew by the model alone may go elsewhere."""
    out = soak_config(CONFIG_FILE, tmp_path / "soak.yaml", expiry_hours=0.001, faults=True)
    config = PipelineSettings.load(config_file=out).config
    configured = PipelineSettings.load(config_file=CONFIG_FILE).config
    assert config.route.conversations.ttl_hours * 60 == FAULT_MEMORY_MINUTES >= 2
    assert config.notify.ledger_retention_hours * 60 == FAULT_MEMORY_MINUTES
    assert config.ingest.dedup_window_hours == configured.ingest.dedup_window_hours
    assert max(config.route.sla.minutes.values()) <= FAULT_MEMORY_MINUTES / 2
    digests = [s.digest_minutes for s in config.notify.subscriptions if s.digest_minutes]
    assert digests and all(minutes == 0.001 * 60 for minutes in digests)


SOUND = {"memory_stable": True, "lag_stable": True, "lost": 0, "duplicates": 0,
         "undelivered": 0, "republished": 0, "deadletter_by_stage": {}}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "faults"),
    [({"lost": 1}, False), ({"duplicates": 1}, True), ({"undelivered": 1}, True),
     ({"lag_stable": False}, True), ({"memory_stable": False}, False),
     ({"republished": 3}, False), ({"deadletter_by_stage": {"route": 1}}, True),
     ({"deadletter_by_stage": {"ingest": 2, "classify": 1}}, False)],
)  # fmt: skip
def test_the_soak_fails_on_a_loss_a_duplicate_a_delivery_not_made_a_failed_tweet_or_growth(
    change, faults
):
    assert soak_passed(SOUND, faults)
    assert not soak_passed({**SOUND, **change}, faults)


def test_faults_explain_republished_tweets_and_restarted_memory():
    assert soak_passed({**SOUND, "republished": 3, "memory_stable": False}, faults=True)


def test_the_samples_own_dead_letters_do_not_fail_the_soak():
    # ingest refuses what is no tweet or addressed to no handle: the samples', not a failure
    assert soak_passed({**SOUND, "deadletter_by_stage": {"ingest": 4}}, faults=False)
