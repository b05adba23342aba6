"""The runtime install: the four services, the operator commands and the int8 model built ahead
of time run without the dev extra (embedded broker, benches, tests) or the train extra (the
export and quantization tools), as in the image."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from click.testing import CliRunner

from switchboard.cli import main
from tests.conftest import ROOT

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def distribution(requirement: str) -> str:
    return re.split(r"[=<>\[ ;]", requirement, maxsplit=1)[0].lower().replace("-", "_")


BASE = {distribution(r) for r in PROJECT["dependencies"]}
EXTRAS = {
    name: {distribution(r) for r in requirements} - BASE
    for name, requirements in PROJECT["optional-dependencies"].items()
}


@pytest.fixture(scope="session")
def runtime_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site-packages folder that sees this venv's packages except those only the extras
    bring (their modules and their metadata), and the switchboard package itself."""
    left_out = set().union(*EXTRAS.values())
    modules = {
        module
        for module, owners in packages_distributions().items()
        if {distribution(o) for o in owners} & left_out
    }
    site = Path(sysconfig.get_paths()["purelib"])
    folder = tmp_path_factory.mktemp("runtime-site")
    for entry in os.listdir(site):
        stem = entry.split(".")[0]
        metadata = entry.endswith((".dist-info", ".egg-info"))
        owner = distribution(re.split(r"-\d", entry)[0]) if metadata else None
        if (
            entry.endswith(".pth")
            or entry.startswith(("__editable__", "switchboard"))
            or stem in modules
            or owner in left_out
        ):
            continue
        (folder / entry).symlink_to(site / entry)
    (folder / "switchboard").symlink_to(ROOT / "services")
    return folder


def run_installed(site: Path, code: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a Python that sees only ``site`` (no site-packages of its own)."""
    return subprocess.run(
        [sys.executable, "-S", "-c", code],
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


def test_the_extras_hold_the_tools_and_the_base_what_production_runs():
    assert {"noida_db", "aiosmtpd", "psutil", "pytest", "matplotlib"} <= EXTRAS["dev"]
    assert EXTRAS["train"] == {"onnx"}
    assert {"faust_streaming", "aiokafka", "fastapi", "onnxruntime", "scikit_learn"} <= BASE


def test_each_service_and_the_operator_commands_run_without_the_extras(runtime_install, tmp_path):
    code = f"""
import importlib.util
from click.testing import CliRunner
from switchboard.cli import main
assert importlib.util.find_spec("psutil") is None and importlib.util.find_spec("onnx") is None
for service in ("ingest", "classify", "route", "notify"):
    __import__(f"switchboard.{{service}}.service")
    assert CliRunner().invoke(main, [service, "--help"]).exit_code == 0, service
checked = CliRunner().invoke(main, ["config", "check"])
assert checked.exit_code == 0, checked.output
for tool in (["run", "--workdir", {str(tmp_path / "run")!r}], ["bench"]):
    refused = CliRunner().invoke(main, tool)  # the dev extra's: a message, not a traceback
    assert refused.exit_code == 2, (tool, refused.output)
    assert "needs the dev extra" in refused.output and "switchboard[dev]" in refused.output, tool
# int8 with no model built ahead: refused, naming what to do, before torch loads for nothing
import sys, tempfile
from pathlib import Path
from switchboard.classify.model import TweetClassifier
from switchboard.shared.settings import ConfigError
try:
    TweetClassifier.load(runtime="onnx-int8", onnx_dir=Path(tempfile.mkdtemp()))
except ConfigError as error:
    assert "cannot build one" in str(error) and "build-onnx" in str(error), error
else:
    raise AssertionError("an int8 model was built without the onnx package")
assert "torch" not in sys.modules, "torch loaded for a build that cannot happen"
print("ran")
"""
    done = run_installed(runtime_install, code)
    assert done.returncode == 0 and "ran" in done.stdout, done.stderr[-3000:]


def test_classify_serves_the_int8_model_built_ahead_without_the_train_extra(
    runtime_install, tmp_path
):
    """`switchboard classify build-onnx` (the image's build step) writes the model; the runtime
    install serves it and labels tweets as the build's own process does; without it, it says
    how to build one instead of failing on a missing package."""
    built = CliRunner().invoke(main, ["classify", "build-onnx", "--out", str(tmp_path / "onnx")])
    assert built.exit_code == 0, built.output
    [model_file] = (tmp_path / "onnx").glob("*.onnx")
    code = f"""
import json
from pathlib import Path
from switchboard.classify.model import TweetClassifier
from switchboard.shared.settings import ConfigError
texts = ["@AcmeHelp my card was charged twice", "Acme shares jump after earnings beat"]
model = TweetClassifier.load(runtime="onnx-int8", onnx_dir=Path({str(tmp_path / "onnx")!r}))
labels = [[p.department, p.urgency] for p in model.predict(texts)]
print(json.dumps([str(model.onnx.path), *labels]))
try:
    TweetClassifier.load(runtime="onnx-int8", onnx_dir=Path({str(tmp_path / "empty")!r}))
except ConfigError as error:
    print("refused:", error)
"""
    done = run_installed(runtime_install, code)
    assert done.returncode == 0, done.stderr[-3000:]
    served, refused = done.stdout.strip().splitlines()[-2:]
    from switchboard.classify.model import TweetClassifier

    here = TweetClassifier.load(runtime="onnx-int8", onnx_dir=tmp_path / "onnx")
    texts = ["@AcmeHelp my card was charged twice", "Acme shares jump after earnings beat"]
    expected = [str(model_file), *([p.department, p.urgency] for p in here.predict(texts))]
    assert served == json.dumps(expected)
    assert refused.startswith("refused: SWITCHBOARD_ONNX_DIR:") and "build-onnx" in refused
