"""classify's memory across a model cutover: ``.venv/bin/python bench/model_swap_memory.py``.

classify loads the new model beside the one serving and drops the old one after the swap
(services/classify/service.py); this loads the default artifact as classify does (int8 ONNX
Runtime, warmed up, a batch of 128 labelled), then the commercial one, then drops the first, and
prints the resident memory at each step and its peak (sampled every 50 ms).
"""

from __future__ import annotations

import gc
import threading
import time

import psutil

from switchboard.classify.config import ClassifyConfig
from switchboard.classify.model import COMMERCIAL_ARTIFACT_NAME, DEFAULT_ARTIFACT_NAME
from switchboard.classify.service import load_model

BATCH = ["@SkylarkHelp my order is late and nobody answers the phone"] * 128


def main() -> None:
    process, peak = psutil.Process(), [0]

    def watch() -> None:
        while True:
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.05)

    def rss() -> str:
        time.sleep(0.5)
        return f"{process.memory_info().rss / 2**20:.0f} MB"

    threading.Thread(target=watch, daemon=True).start()
    options = ClassifyConfig()
    serving = load_model(options, DEFAULT_ARTIFACT_NAME, None)
    serving.predict(BATCH)
    one = rss()
    candidate = load_model(options, COMMERCIAL_ARTIFACT_NAME, None)
    candidate.predict(BATCH)
    both = rss()
    del serving
    gc.collect()
    after = rss()
    print(f"one model {one}; both, during the switch {both}; after the old one is dropped "
          f"{after}; peak {peak[0] / 2**20:.0f} MB")  # fmt: skip


if __name__ == "__main__":
    main()
