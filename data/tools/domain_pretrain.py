"""Continues the backbone's pretraining on real tweets (masked language modelling), as a
starting point for `switchboard classify train --backbone DIR`.

all-MiniLM-L6-v2 learnt its language from web text and sentence pairs; people's tweets to
companies are shorter, sloppier and full of handles, slang and product names. Masked-word
prediction on the pool's real tweets (no labels) adapts the encoder to them before it is tuned
to the labels ("domain-adaptive pretraining", Gururangan et al. 2020).

Corpus: every tweet of ../shared/data/realpool/pool.jsonl except those of the real dev and
test splits and any that nearly copies a dev or test tweet, real or written (the splits' own
check, ``near_duplicates``): dev, which chooses, and test, which reports, stay unseen. Tweets of
the training split stay in (their text is training data already). The pool was cleared of the
real-world evaluation set when it was assembled.

    .venv/bin/python data/tools/domain_pretrain.py --out /tmp/minilm-tweets [--epochs 1]
        [--backbone DIR]

``--backbone`` continues from a folder this script wrote (its MLM head starts anew).

writes a Hugging Face model folder (the backbone's config and tokenizer, the adapted weights)
that `classify train --backbone` starts from. The MLM head is new (the backbone ships without
one); only the encoder's weights are kept.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local folders only: nothing from a hub

import torch  # noqa: E402
from transformers import (  # noqa: E402
    BertForMaskedLM,
    BertTokenizerFast,
    DataCollatorForLanguageModeling,
)

from switchboard.classify.data import near_duplicates  # noqa: E402
from switchboard.classify.model import available_cpus, default_backbone  # noqa: E402
from switchboard.classify.tokens import prepare_text  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
POOL = ROOT.parent / "shared" / "data" / "realpool" / "pool.jsonl"
REAL = ROOT / "data" / "labeled" / "real"
WRITTEN = ROOT / "data" / "labeled"
CHUNK = 2000  # pool tweets compared with the held-out splits at once (bounds memory)
MAX_TOKENS = 64


def held_out() -> tuple[set[str], list[str]]:
    ids, texts = set(), []
    for folder in (REAL, WRITTEN):
        for split in ("dev", "test"):
            for line in (folder / f"{split}.jsonl").open(encoding="utf-8"):
                if line.strip():
                    row = json.loads(line)
                    ids.add(str(row.get("id")))
                    texts.append(row["text"])
    return ids, texts


def corpus(seed: int) -> list[str]:
    """The pool's tweets, dev and test and their near copies left out, shuffled."""
    ids, texts = held_out()
    pool = [json.loads(line) for line in POOL.open(encoding="utf-8") if line.strip()]
    rows = [r for r in pool if str(r["id"]) not in ids and r["text"].strip()]
    kept: list[str] = []
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start : start + CHUNK]
        copies = {q for q, _, _ in near_duplicates([r["text"] for r in chunk], texts)}
        kept += [prepare_text(r["text"]) for i, r in enumerate(chunk) if i not in copies]
    random.Random(seed).shuffle(kept)
    print(f"{len(kept)} of {len(pool)} pool tweets kept for pretraining", flush=True)
    return kept


def masked_loss(model: BertForMaskedLM, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The MLM loss, with the vocabulary's logits computed at the masked positions only (a
    seventh of them): most of the step's cost otherwise, for nothing."""
    hidden = model.bert(
        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
    ).last_hidden_state
    labels = inputs["labels"]
    masked = labels != -100
    logits = model.cls(hidden[masked])
    return torch.nn.functional.cross_entropy(logits, labels[masked])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--backbone", type=Path, default=None,
                        help="a model folder to continue from (default: the backbone)")  # fmt: skip
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--limit", type=int, default=None, help="use the first N tweets only")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(available_cpus())
    backbone = args.backbone or default_backbone()
    if not (backbone / "config.json").is_file():
        parser.error(f"--backbone {backbone}: not a model folder (no config.json)")
    tokenizer = BertTokenizerFast.from_pretrained(backbone)
    model = BertForMaskedLM.from_pretrained(backbone)
    texts = corpus(args.seed)[: args.limit]
    collate = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    steps = math.ceil(len(texts) * args.epochs / args.batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / (0.06 * steps)) * max(0.0, 1 - step / steps)
    )
    model.train()
    started, seen = time.monotonic(), 0
    for step in range(steps):
        start = (step * args.batch) % len(texts)
        batch = texts[start : start + args.batch]
        encoded = tokenizer(batch, truncation=True, max_length=MAX_TOKENS)
        inputs = collate([{"input_ids": ids} for ids in encoded["input_ids"]])
        loss = masked_loss(model, inputs)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        seen += len(batch)
        if step % 50 == 0 or step == steps - 1:
            rate = seen / (time.monotonic() - started)
            print(f"step {step + 1}/{steps} loss {loss.item():.3f} ({rate:.0f} tweets/s)",
                  flush=True)  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    model.bert.save_pretrained(args.out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "vocab.txt"):  # fmt: skip
        if (backbone / name).resolve() != (args.out / name).resolve():  # not continued in place
            shutil.copy(backbone / name, args.out / name)
    print(f"written to {args.out}", flush=True)


if __name__ == "__main__":
    main()
