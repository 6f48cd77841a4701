"""Runs squeeze's ONNX exports in ONNX Runtime (`scripts/check-onnx.sh` drives it).

  image FILE --data DIR               Fashion-MNIST test accuracy of an image model
  text DIR --data STS --ours NPY      STS-B dev Spearman of a text encoder's export, and the
                                      cosine of its embeddings to squeeze's own (NPY: the
                                      embeddings `squeeze embed` wrote for the same
                                      sentences, pair by pair: s1, s2, s1, s2, ...)
  time FILE [--text DIR] --batch N    one timing round: batch-1 median latency (ms) over
                                      real inputs and batch-N throughput (items/s)
  ort-quantize SRC DST                ONNX Runtime's own dynamic int8 quantizer on SRC

Each prints one JSON object. Sessions use 2 intra-op threads, graph optimizations on
(ORT_ENABLE_ALL), as a deployment would."""
import argparse
import gzip
import json
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort

MEAN, STD = 0.2860, 0.3530  # squeeze's Fashion-MNIST normalization (crate::data)


def session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def fmnist(data):
    with gzip.open(f"{data}/t10k-images-idx3-ubyte.gz") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(f"{data}/t10k-labels-idx1-ubyte.gz") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)
    return ((x.astype(np.float32) / 255.0 - MEAN) / STD), y


def stsb(path):
    pairs = []
    for line in open(path, encoding="utf-8"):
        cols = line.rstrip("\n").split("\t")
        if len(cols) >= 7:
            pairs.append((float(cols[4]), cols[5], cols[6]))
    return pairs


class Text:
    def __init__(self, d):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(f"{d}/tokenizer.json")
        self.tok.enable_truncation(256)
        self.tok.no_padding()
        self.sess = session(f"{d}/model.onnx")
        self.names = [i.name for i in self.sess.get_inputs()]

    def feeds(self, sentences):
        enc = self.tok.encode_batch(sentences)
        n = max(len(e.ids) for e in enc)
        ids = np.zeros((len(enc), n), np.int64)
        mask = np.zeros((len(enc), n), np.int64)
        for i, e in enumerate(enc):
            ids[i, : len(e.ids)] = e.ids
            mask[i, : len(e.ids)] = 1
        f = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        return {k: v for k, v in f.items() if k in self.names}

    def embed(self, sentences, batch=32):
        out = []
        for i in range(0, len(sentences), batch):
            out.append(self.sess.run(None, self.feeds(sentences[i : i + batch]))[0])
        return np.concatenate(out)


def spearman(a, b):
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).correlation) * 100


def cos_rows(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)


def cmd_image(a):
    x, y = fmnist(a.data)
    s = session(a.file)
    pred = np.concatenate([s.run(None, {"input": x[i : i + 500]})[0].argmax(1) for i in range(0, len(x), 500)])
    return {"accuracy": float((pred == y).mean())}


def cmd_text(a):
    pairs = stsb(a.data)
    t = Text(a.dir)
    sents = [s for _, s1, s2 in pairs for s in (s1, s2)]
    e = t.embed(sents)
    ours = np.load(a.ours)
    cos = cos_rows(e, ours)
    sims = cos_rows(e[0::2], e[1::2])
    return {
        "spearman": spearman(sims, [g for g, _, _ in pairs]),
        "cosine_to_squeeze_mean": float(cos.mean()),
        "cosine_to_squeeze_min": float(cos.min()),
    }


def cmd_time(a):
    if a.text:
        t = Text(a.text)
        sents = [s for _, s1, _ in stsb(a.data) for s in (s1,)]
        one = [t.feeds([s]) for s in sents[: a.items]]
        big = t.feeds(sents[: a.batch])
        run = lambda f: t.sess.run(None, f)
    else:
        x, _ = fmnist(a.data)
        s = session(a.file)
        one = [{"input": x[i : i + 1]} for i in range(a.items)]
        big = {"input": x[: a.batch]}
        run = lambda f: s.run(None, f)
    for f in one[:20]:
        run(f)
    lat = []
    for f in one:
        t0 = time.perf_counter()
        run(f)
        lat.append((time.perf_counter() - t0) * 1e3)
    run(big)
    reps, t0 = 0, time.perf_counter()
    while reps < 3 or time.perf_counter() - t0 < 1.0:
        run(big)
        reps += 1
    thr = reps * a.batch / (time.perf_counter() - t0)
    return {"latency_ms_b1": statistics.median(lat), "throughput": thr, "batch": a.batch}


def cmd_quantize(a):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(a.src, a.dst, weight_type=QuantType.QInt8, per_channel=True)
    return {"wrote": a.dst}


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("image")
    i.add_argument("file")
    i.add_argument("--data", required=True)
    t = sub.add_parser("text")
    t.add_argument("dir")
    t.add_argument("--data", required=True)
    t.add_argument("--ours", required=True)
    tm = sub.add_parser("time")
    tm.add_argument("file")
    tm.add_argument("--text")
    tm.add_argument("--data", required=True)
    tm.add_argument("--batch", type=int, required=True)
    tm.add_argument("--items", type=int, default=200)
    q = sub.add_parser("ort-quantize")
    q.add_argument("src")
    q.add_argument("dst")
    a = p.parse_args()
    f = {"image": cmd_image, "text": cmd_text, "time": cmd_time, "ort-quantize": cmd_quantize}[a.cmd]
    json.dump(f(a), sys.stdout)
    print()


if __name__ == "__main__":
    main()
