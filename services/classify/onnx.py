"""The ONNX Runtime path (``classify.runtime: onnx-int8``, the default): the fine-tuned encoder
and both heads exported to ONNX, every matrix multiplication by a weight done in int8.

Weights are quantized per output channel (per matrix costs accuracy on real tweets).
Activations are quantized per token: each row of a layer's input gets its own scale, from its
own largest value. onnxruntime's dynamic quantization takes one scale for the whole batch
instead, so a tweet's labels would depend on the tweets it is batched with; per token, a tweet
gets the same scores in any batch, with the same accuracy, for a few percent of the speed
(docs/performance.md). The rewrite
is ``quantize_per_token`` below: ONNX operators for the row scales and ``QuantizeLinear`` for
the uint8 activations (shifted by 128), and onnxruntime's ``MatMulIntegerToFloat`` for the
product against int8 weights and their column scales (its u8 x s8 fast path, with the int32 to
float conversion fused, faster than separate ``MatMulInteger``, ``Cast`` and ``Mul``).

The int8 file is built from the artifact on first use and cached in the temp folder
(``<tmp>/switchboard-onnx/<artifact version>-<weights hash>.<RECIPE>.onnx``; the token
embeddings stay fp32), or in ``SWITCHBOARD_ONNX_DIR``, where ``switchboard classify build-onnx``
puts it ahead of time (the image does); concurrent builders never see half a file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from switchboard.classify.model import ENCODER_FILE
from switchboard.shared.settings import ConfigError

log = logging.getLogger(__name__)

RECIPE = "int8-per-token-v2"  # part of the cached file's name: a new recipe builds a new file
MICROSOFT = "com.microsoft"  # onnxruntime's own operators


def weights_digest(artifact: Path, card: dict, backbone: Path) -> str:
    """A digest of everything the int8 file is built from, read from the files (no torch):
    the backbone's weights and configuration, the artifact's adapter or tuned encoder, its
    heads, its depth."""
    digest = hashlib.sha256(str(card.get("options", {}).get("layers")).encode())
    weights = [p for p in sorted(backbone.iterdir()) if p.suffix in (".safetensors", ".bin")]
    adapter = sorted((artifact / "adapter").glob("*")) if (artifact / "adapter").is_dir() else []
    tuned = [p for p in [artifact / ENCODER_FILE] if p.is_file()]
    artifact_files = [*adapter, *tuned, artifact / "heads.safetensors"]
    for path in [backbone / "config.json", *weights, *artifact_files]:
        digest.update(path.name.encode())
        with path.open("rb") as file:
            hashlib.file_digest(file, lambda: digest)  # type: ignore[arg-type]
    return digest.hexdigest()


def int8_model_path(
    artifact: Path, card: dict, backbone: Path, cache: Path, network: Callable[[], tuple]
) -> Path:
    """The cached int8 ONNX file of this artifact on this backbone; built from ``network()``
    (the torch encoder and heads, loaded only then) if it is not in ``cache`` yet."""
    digest = weights_digest(artifact, card, backbone)
    target = cache / f"{card['version']}-{digest[:12]}.{RECIPE}.onnx"
    if not target.is_file():
        _can_build(target)  # before torch and the network are loaded for nothing
        cache.mkdir(parents=True, exist_ok=True)
        _build(*network(), target)
    return target


def _can_build(target: Path) -> None:
    if importlib.util.find_spec("onnx") is None:  # the runtime install: built ahead of time
        raise ConfigError(
            f"SWITCHBOARD_ONNX_DIR: no int8 model {target.name} in {target.parent}, and this "
            "install cannot build one (the onnx package is in the train extra): run `switchboard "
            "classify build-onnx --out DIR` where it is installed, or set classify.runtime: torch"
        )


def _build(encoder: Any, heads: Any, target: Path) -> None:
    """Export the torch encoder and heads to ONNX and quantize it (``quantize_per_token``)."""
    import onnx
    import torch

    class Full(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder, self.heads = encoder, heads

        def forward(self, input_ids: Any, attention_mask: Any) -> tuple[Any, Any]:
            return self.heads(self.encoder(input_ids, attention_mask))

    log.info("building the int8 ONNX model", extra={"path": str(target)})
    sample = encoder.tokenize(["@user a tweet", "@user a longer tweet about a refund"], 32)
    with tempfile.TemporaryDirectory() as folder:
        fp32 = Path(folder) / "model.onnx"
        torch.onnx.export(
            Full().eval(),
            (sample["input_ids"], sample["attention_mask"]),
            str(fp32),
            input_names=["input_ids", "attention_mask"],
            output_names=["department", "urgency"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "tokens"},
                "attention_mask": {0: "batch", 1: "tokens"},
                "department": {0: "batch"},
                "urgency": {0: "batch"},
            },
            opset_version=18,
            dynamo=False,
        )
        model = quantize_per_token(onnx.load(str(fp32)))
        partial = target.with_suffix(".partial")
        onnx.save(model, str(partial))
        partial.replace(target)  # atomic: a concurrent reader never sees half a file


def quantize_per_token(model: Any) -> Any:
    """``model`` with every ``MatMul`` by a 2-D weight done in int8: the weight per output
    column, the activations per row (the last axis), both symmetric. Each distinct input is
    quantized once (query, key and value share theirs)."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    weights = {w.name: w for w in graph.initializer}
    constants = [
        helper.make_tensor("q_axis", TensorProto.INT64, [1], [-1]),
        helper.make_tensor("q_levels", TensorProto.FLOAT, [], [127.0]),
        helper.make_tensor("q_tiny", TensorProto.FLOAT, [], [1e-8]),
        helper.make_tensor("q_one", TensorProto.FLOAT, [], [1.0]),
        helper.make_tensor("q_zero", TensorProto.UINT8, [], [128]),
    ]
    nodes: list[Any] = []
    quantized: dict[str, str] = {}  # activation name -> prefix of its quantized form
    for node in graph.node:
        weight = weights.get(node.input[1]) if node.op_type == "MatMul" else None
        if weight is None or len(weight.dims) != 2:
            nodes.append(node)
            continue
        w = f"w{len(constants)}_"
        matrix = numpy_helper.to_array(weight).astype(np.float32)
        scale = np.maximum(np.abs(matrix).max(axis=0) / 127.0, 1e-8).astype(np.float32)
        levels = np.round(matrix / scale).astype(np.int8)
        constants += [numpy_helper.from_array(levels, w + "q"),
                      numpy_helper.from_array(scale, w + "scale")]  # fmt: skip
        x = node.input[0]
        if x not in quantized:
            quantized[x] = a = f"a{len(quantized)}_"
            nodes += _quantize_rows(helper, x, a)
        a = quantized[x]
        nodes += [
            # (a_q - 128) x w_q x 1.0 x column scales, as float; then each row's own scale
            helper.make_node(
                "MatMulIntegerToFloat",
                [a + "q", w + "q", "q_one", w + "scale", "q_zero"],
                [w + "columns"],
                domain=MICROSOFT,
            ),
            helper.make_node("Mul", [w + "columns", a + "scale"], [node.output[0]]),
        ]
    used = {name for node in nodes for name in node.input}
    kept = [w for w in graph.initializer if w.name in used]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept + constants)
    if all(opset.domain != MICROSOFT for opset in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MICROSOFT, 1))
    return model


def _quantize_rows(helper: Any, x: str, a: str) -> list[Any]:
    """``a+"q"``: ``x`` in uint8 (round(x / scale) + 128), one scale per row: ``a+"scale"``,
    the row's largest magnitude over 127 (so no value needs clipping)."""
    return [
        helper.make_node("Abs", [x], [a + "abs"]),
        helper.make_node("ReduceMax", [a + "abs", "q_axis"], [a + "max"], keepdims=1),
        helper.make_node("Div", [a + "max", "q_levels"], [a + "raw_scale"]),
        helper.make_node("Max", [a + "raw_scale", "q_tiny"], [a + "scale"]),
        helper.make_node("Reciprocal", [a + "scale"], [a + "inverse"]),
        helper.make_node("Mul", [x, a + "inverse"], [a + "scaled"]),
        # round half to even, + 128, as uint8: one vectorized pass instead of three
        helper.make_node("QuantizeLinear", [a + "scaled", "q_one", "q_zero"], [a + "q"]),
    ]


class OnnxHeads:
    """Department and urgency logits from the int8 ONNX model, like ``TweetClassifier.logits``.

    Each run uses one thread, and ``workers`` runs go in parallel (data parallel, not operator
    parallel): matrices of a bucket of 8 tweets are too small to split between threads, so
    onnxruntime's own threads inside one run cost more CPU per tweet (docs/performance.md).
    """

    def __init__(self, path: Path, workers: int) -> None:
        import onnxruntime

        self.path = path

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        # onnxruntime runs are thread-safe and release the GIL: one session serves every worker.
        self.session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        self.workers = max(1, workers)
        self._pool = (
            ThreadPoolExecutor(self.workers, thread_name_prefix="onnx")
            if self.workers > 1
            else None
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        department, urgency = self.session.run(
            None,
            {
                "input_ids": batch["input_ids"].astype(np.int64, copy=False),
                "attention_mask": batch["attention_mask"].astype(np.int64, copy=False),
            },
        )
        return department, urgency

    def run_all(self, batches: list[dict[str, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Logits of each batch, in order; the batches run on the workers in parallel, the
        largest first: started last, the longest bucket would leave the other workers idle
        while it finishes."""
        if self._pool is None or len(batches) < 2:
            return [self(batch) for batch in batches]
        largest_first = sorted(range(len(batches)), key=lambda i: -batches[i]["input_ids"].size)
        running = {i: self._pool.submit(self, batches[i]) for i in largest_first}
        return [running[i].result() for i in range(len(batches))]
