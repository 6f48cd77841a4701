#!/usr/bin/env python3
"""PyTorch peer of `squeeze bench train-text`: one distillation step of a sentence-encoder
student — forward in train mode (dropout on), mean pooling over the mask, L2
normalization, loss 1 − cos(embedding, target), backward, AdamW update — on the same real
sentences squeeze uses (the first BATCH sentences of an STS-B file, both sentences of each
pair in order), padded to the batch's longest. Targets are fixed random unit vectors: the
step's cost does not depend on them.

usage: train_text_peer.py HF_DIR STS_FILE --batch B --steps N --threads T
prints one JSON object: pytorch_ms_per_step (median over N timed steps after 3 warm-up
steps), the batch's token count, and the versions used.
"""
import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
import transformers

from minilm_peer import sentences  # both sentences of every STS-B pair, in file order


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("sts")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    tok = transformers.AutoTokenizer.from_pretrained(a.model)
    model = transformers.AutoModel.from_pretrained(a.model)
    model.train()
    enc = tok(sentences(a.sts)[:a.batch], padding=True, truncation=True, return_tensors="pt")
    target = torch.nn.functional.normalize(torch.randn(a.batch, model.config.hidden_size), dim=-1)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=0.01)
    mask = enc["attention_mask"].unsqueeze(-1).float()

    def step():
        h = model(**enc).last_hidden_state
        emb = (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        emb = torch.nn.functional.normalize(emb, dim=-1)
        loss = (1 - (emb * target).sum(-1)).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    times = []
    for _ in range(a.steps):
        s = time.perf_counter()
        step()
        times.append(time.perf_counter() - s)
    print(json.dumps({
        "pytorch_ms_per_step": 1e3 * statistics.median(times),
        "tokens": int(enc["attention_mask"].sum()),
        "padded_length": int(enc["input_ids"].shape[1]),
        "batch": a.batch,
        "threads": a.threads,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }))


if __name__ == "__main__":
    main()
