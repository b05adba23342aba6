"""classify's ``threads: 0``: one per core the process may use, a container's CPU limit too."""

from __future__ import annotations

import os
from pathlib import Path

from switchboard.classify.model import available_cpus

AFFINITY = len(os.sched_getaffinity(0))


def test_without_a_cgroup_quota_every_core_of_the_affinity_counts(tmp_path: Path):
    assert available_cpus(tmp_path) == AFFINITY  # no cgroup files at all
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert available_cpus(tmp_path) == AFFINITY


def test_a_cgroup_v2_quota_caps_the_cores_rounded_up(tmp_path: Path):
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert available_cpus(tmp_path) == 1
    (tmp_path / "cpu.max").write_text("1000000 100000\n")  # a limit of 10 cores
    assert available_cpus(tmp_path) == min(AFFINITY, 10)


def test_a_cgroup_v1_quota_caps_the_cores(tmp_path: Path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert available_cpus(tmp_path) == AFFINITY
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    assert available_cpus(tmp_path) == 1
