#!/usr/bin/env python3
"""Peer baselines for the all-MiniLM-L6-v2 speed benchmark (`squeeze bench text`):
PyTorch f32 via sentence-transformers and ONNX Runtime, all with 2 threads, on the same
real STS-B sentences as squeeze. ONNX Runtime runs four graphs: the exported f32 graph
(`ort_f32`), the same after ONNX Runtime's transformer optimizer (`ort_f32_opt`: fused
attention, LayerNorm, GELU), and `quantize_dynamic` int8 of each (`ort_int8`: the plain
graph, per-tensor weights; `ort_int8_opt_pc`: the optimized graph, per-channel weights).
Each int8 variant also reports the mean cosine of its embeddings to ORT f32's over the
sentences (`<name>_cosine_to_f32`).

usage: minilm_peer.py MODEL_DIR STS_FILE N_LATENCY [--no-ort] [--serve] [--onnx KEY=DIR]...

`--onnx KEY=DIR` adds peer `onnx_KEY`: squeeze's own ONNX export (`squeeze export --format
onnx`, DIR/model.onnx, which ends in the pooled, normalized embedding) run by ONNX Runtime
with the same tokenizer, threads and default graph optimizations, and its
`onnx_KEY_cosine_to_f32` against ORT f32.
prints one JSON object: <peer>_latency_ms_b1 (median over the first N_LATENCY sentences,
each embedded alone, tokenization included) and <peer>_throughput_b32 (sentences/s over all
sentences of the file, 32 at a time), plus the versions used.

With --serve the peers are set up once, a line {"ready": ...} (versions, cosines) is
printed, and then each line `round` on stdin times every peer once more and prints one
JSON line of that round's measurements; `quit` ends. `squeeze bench text` drives it so
that its own encoders and the peers alternate within each round.
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
from serve import serve
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
    from onnxruntime.transformers import optimizer
    cfg = bert.config
    opt = os.path.join(tmp, "model-opt.onnx")
    optimizer.optimize_model(f32, model_type="bert", num_heads=cfg.num_attention_heads,
                             hidden_size=cfg.hidden_size).save_model_to_file(opt)
    int8 = os.path.join(tmp, "model-int8.onnx")
    quantize_dynamic(f32, int8, weight_type=QuantType.QInt8)
    int8_opt = os.path.join(tmp, "model-opt-int8-pc.onnx")
    import onnx
    # the fused ops of the optimized graph are outside shape inference's domain
    quantize_dynamic(opt, int8_opt, weight_type=QuantType.QInt8, per_channel=True,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    return {name: ort.InferenceSession(p, opts, providers=["CPUExecutionProvider"])
            for name, p in [("ort_f32", f32), ("ort_f32_opt", opt), ("ort_int8", int8),
                            ("ort_int8_opt_pc", int8_opt)]}


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


def squeeze_onnx_peer(path, tok):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(os.path.join(path, "model.onnx"), opts,
                                providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}

    def embed(batch):
        enc = tok(batch, padding=True, truncation=True, max_length=256, return_tensors="np")
        feed = {"input_ids": enc["input_ids"].astype(np.int64),
                "attention_mask": enc["attention_mask"].astype(np.int64),
                "token_type_ids": np.zeros_like(enc["input_ids"], dtype=np.int64)}
        return sess.run(None, {k: v for k, v in feed.items() if k in names})[0]
    return embed


def onnx_args(argv):
    out = []
    for i, a in enumerate(argv):
        if a == "--onnx":
            key, path = argv[i + 1].split("=", 1)
            out.append((key, path))
    return out


def setup(model_dir, texts, no_ort, exports=()):
    """The peers' embed functions by name, and what does not change between rounds."""
    out = {"threads": THREADS, "torch": torch.__version__}
    peers = {"pytorch": pytorch_peer(model_dir)}
    if no_ort:
        return peers, out
    import onnxruntime as ort
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir)
    out["onnxruntime"] = ort.__version__
    with tempfile.TemporaryDirectory() as tmp:
        # the sessions hold their graphs in memory once made
        sessions = ort_sessions(model_dir, tmp)
    embeds = {name: ort_embed(sess, tok) for name, sess in sessions.items()}
    for key, path in exports:
        embeds[f"onnx_{key}"] = squeeze_onnx_peer(path, tok)
    ref = None
    for name, embed in embeds.items():
        peers[name] = embed
        e = np.concatenate([embed(texts[i:i + 32]) for i in range(0, len(texts), 32)])
        if ref is None:
            ref = e
        else:
            out[f"{name}_cosine_to_f32"] = float((e * ref).sum(1).mean())
    return peers, out


def one_round(peers, texts, n_lat):
    out = {}
    for name, embed in peers.items():
        lat, thr = measure(embed, texts, n_lat)
        out[f"{name}_latency_ms_b1"] = lat
        out[f"{name}_throughput_b32"] = thr
    # the best int8 variant: lowest batch-1 latency, highest batch-32 throughput
    int8 = [n for n in ["ort_int8", "ort_int8_opt_pc"] if n in peers]
    if int8:
        out["ort_best_int8_latency_ms_b1"] = min(out[f"{n}_latency_ms_b1"] for n in int8)
        out["ort_best_int8_throughput_b32"] = max(out[f"{n}_throughput_b32"] for n in int8)
    return out


def main():
    model_dir, sts, n_lat = sys.argv[1], sys.argv[2], int(sys.argv[3])
    texts = sentences(sts)
    peers, fixed = setup(model_dir, texts, "--no-ort" in sys.argv, onnx_args(sys.argv))
    if "--serve" not in sys.argv:
        print(json.dumps({**fixed, **one_round(peers, texts, n_lat)}))
        return
    serve(fixed, lambda: one_round(peers, texts, n_lat))


if __name__ == "__main__":
    main()
