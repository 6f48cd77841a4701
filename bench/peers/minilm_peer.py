#!/usr/bin/env python3
"""Peer baselines for the all-MiniLM-L6-v2 speed benchmark (`squeeze bench text`):
PyTorch f32 via sentence-transformers, ONNX Runtime f32 and ONNX Runtime dynamic int8,
all with 2 threads, on the same real STS-B sentences as squeeze.

usage: minilm_peer.py MODEL_DIR STS_FILE N_LATENCY [--no-ort]
prints one JSON object: <peer>_latency_ms_b1 (median over the first N_LATENCY sentences,
each embedded alone, tokenization included) and <peer>_throughput_b32 (sentences/s over all
sentences of the file, 32 at a time), plus the versions used.
"""
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np
import torch

THREADS = 2
torch.set_num_threads(THREADS)


def sentences(path):
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            c = line.rstrip("\n").split("\t")
            if len(c) >= 7:
                out += [c[5], c[6]]
    return out


def measure(embed, texts, n_lat):
    for t in texts[:5]:
        embed([t])
    times = []
    for t in texts[:n_lat]:
        s = time.perf_counter()
        embed([t])
        times.append(time.perf_counter() - s)
    lat = statistics.median(times) * 1e3
    s = time.perf_counter()
    # sorted by length as sentence-transformers and squeeze both do
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for i in range(0, len(order), 32):
        embed([texts[j] for j in order[i:i + 32]])
    return lat, len(texts) / (time.perf_counter() - s)


def pytorch_peer(model_dir):
    from sentence_transformers import SentenceTransformer
    m = SentenceTransformer(model_dir, device="cpu")
    return lambda b: m.encode(b, batch_size=32, convert_to_numpy=True)


def ort_sessions(model_dir, tmp):
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModel
    bert = AutoModel.from_pretrained(model_dir).eval()

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    model = Wrap()
    f32 = os.path.join(tmp, "model.onnx")
    ids = torch.ones((1, 8), dtype=torch.long)
    axes = {0: "batch", 1: "seq"}
    torch.onnx.export(model, (ids, ids, torch.zeros_like(ids)), f32,
                      input_names=["input_ids", "attention_mask", "token_type_ids"],
                      output_names=["last_hidden_state"],
                      dynamic_axes={"input_ids": axes, "attention_mask": axes,
                                    "token_type_ids": axes, "last_hidden_state": axes},
                      opset_version=17, dynamo=False)
    int8 = os.path.join(tmp, "model-int8.onnx")
    quantize_dynamic(f32, int8, weight_type=QuantType.QInt8)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    return {name: ort.InferenceSession(p, opts, providers=["CPUExecutionProvider"])
            for name, p in [("ort_f32", f32), ("ort_int8", int8)]}


def ort_embed(sess, tok):
    def embed(batch):
        enc = tok(batch, padding=True, truncation=True, max_length=256, return_tensors="np")
        feed = {"input_ids": enc["input_ids"].astype(np.int64),
                "attention_mask": enc["attention_mask"].astype(np.int64),
                "token_type_ids": np.zeros_like(enc["input_ids"], dtype=np.int64)}
        h = sess.run(None, feed)[0]
        m = feed["attention_mask"][..., None].astype(np.float32)
        e = (h * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
        return e / np.linalg.norm(e, axis=1, keepdims=True)
    return embed


def main():
    model_dir, sts, n_lat = sys.argv[1], sys.argv[2], int(sys.argv[3])
    texts = sentences(sts)
    out = {"threads": THREADS, "torch": torch.__version__}
    lat, thr = measure(pytorch_peer(model_dir), texts, n_lat)
    out.update(pytorch_latency_ms_b1=lat, pytorch_throughput_b32=thr)
    if "--no-ort" not in sys.argv:
        import onnxruntime as ort
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(model_dir)
        out["onnxruntime"] = ort.__version__
        with tempfile.TemporaryDirectory() as tmp:
            for name, sess in ort_sessions(model_dir, tmp).items():
                lat, thr = measure(ort_embed(sess, tok), texts, n_lat)
                out[f"{name}_latency_ms_b1"] = lat
                out[f"{name}_throughput_b32"] = thr
    print(json.dumps(out))


if __name__ == "__main__":
    main()
