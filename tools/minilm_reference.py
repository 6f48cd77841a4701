#!/usr/bin/env python3
"""Reference numbers for the MiniLM / STS-B work, from the official Python stack
(sentence-transformers + transformers + torch). Needs a venv with those packages:
    python3 -m venv /work/peers-venv && /work/peers-venv/bin/pip install torch sentence-transformers scipy

Subcommands (all print JSON on stdout):
  golden MODEL_DIR   embeddings of tools/golden_sentences.txt →
                     crates/squeeze/tests/fixtures/minilm_golden.safetensors
  stsb MODEL_DIR FILE  Spearman/Pearson ×100 of cosine similarity on an STS-B file
  compare DIR_A DIR_B  embeds the golden sentences with both directories (e.g. the
                       original and `squeeze export --format hf` output): min cosine,
                       max abs diff
  npy MODEL_DIR FILE.npy  compares the reference embeddings of the golden sentences with
                       a `squeeze embed` .npy output
"""
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

torch.set_num_threads(2)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SENTENCES = os.path.join(ROOT, "tools", "golden_sentences.txt")
FIXTURE = os.path.join(ROOT, "crates", "squeeze", "tests", "fixtures", "minilm_golden.safetensors")


def golden_sentences():
    with open(SENTENCES, encoding="utf-8") as f:
        return f.read().split("\n")[:-1]


def embed(model_dir, sentences):
    m = SentenceTransformer(model_dir, device="cpu")
    return m.encode(sentences, batch_size=16, convert_to_numpy=True).astype(np.float32)


def read_stsb(path):
    pairs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            c = line.rstrip("\n").split("\t")
            if len(c) >= 7:
                pairs.append((float(c[4]), c[5], c[6]))
    return pairs


def cmd_golden(model_dir):
    from safetensors.numpy import save_file
    e = embed(model_dir, golden_sentences())
    save_file({"embeddings": e}, FIXTURE)
    print(json.dumps({"sentences": len(e), "dim": e.shape[1], "fixture": FIXTURE}))


def cmd_stsb(model_dir, path):
    from scipy.stats import pearsonr, spearmanr
    pairs = read_stsb(path)
    a = embed(model_dir, [p[1] for p in pairs])
    b = embed(model_dir, [p[2] for p in pairs])
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    gold = [p[0] for p in pairs]
    print(json.dumps({"pairs": len(pairs), "spearman": 100 * spearmanr(cos, gold).statistic,
                      "pearson": 100 * pearsonr(cos, gold).statistic}))


def report(a, b):
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"sentences": len(a), "min_cosine": float(cos.min()),
            "max_abs_diff": float(np.abs(a - b).max())}


def cmd_compare(dir_a, dir_b):
    s = golden_sentences()
    print(json.dumps(report(embed(dir_a, s), embed(dir_b, s))))


def cmd_npy(model_dir, npy):
    s = golden_sentences()
    print(json.dumps(report(embed(model_dir, s), np.load(npy))))


if __name__ == "__main__":
    cmds = {"golden": cmd_golden, "stsb": cmd_stsb, "compare": cmd_compare, "npy": cmd_npy}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        sys.exit(__doc__)
    cmds[sys.argv[1]](*sys.argv[2:])
