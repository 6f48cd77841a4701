#!/usr/bin/env python3
"""PyTorch static int8 peer of `squeeze bench quant`: the same network as a squeeze image
checkpoint (a sequential graph of conv2d / batch_norm / relu / max_pool2d / flatten /
linear, read from model.json + model.safetensors), BatchNorm folded into the convolutions
as squeeze's recipe does, then eager-mode static quantization on the x86 (fbgemm) backend:
conv+ReLU and linear+ReLU fused, per-channel int8 weights, activation ranges observed on
the first CALIB Fashion-MNIST training images, the classifier (last linear) kept in f32 as
squeeze keeps it. Measures test accuracy, batch-1 latency (median of RUNS single-image
calls) and batch-256 throughput, for the f32 and the int8 model, with `--threads` threads.

usage: quant_peer.py MODEL_DIR DATA_DIR [--calib 1024] [--runs 200] [--threads 2] [--serve]
prints one JSON object. With --serve the models are built and their accuracy measured
once, a line {"ready": ...} is printed, and each line `round` on stdin times them once
more and prints one JSON line {"round": ...}; `quit` ends (`squeeze bench quant` drives
it so that its models and PyTorch's alternate within each round).
"""
import argparse
import gzip
import json
import os
import statistics
import time

import numpy as np
from serve import serve
import torch
import torch.nn as nn
from safetensors.numpy import load_file

MEAN, STD = 0.2860, 0.3530


def images(data_dir, split, n=None):
    pre = "train" if split == "train" else "t10k"
    with gzip.open(os.path.join(data_dir, f"{pre}-images-idx3-ubyte.gz")) as f:
        x = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(os.path.join(data_dir, f"{pre}-labels-idx1-ubyte.gz")) as f:
        y = np.frombuffer(f.read(), dtype=np.uint8, offset=8)
    x, y = x[:n], y[:n]
    x = (x.astype(np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))


def build(model_dir):
    """The graph as a list of torch modules (BatchNorm folded into the conv before it)."""
    g = json.load(open(os.path.join(model_dir, "model.json")))
    w = load_file(os.path.join(model_dir, "model.safetensors"))
    mods, prev = [], "input"
    for n in g["nodes"]:
        op, name = n["op"], n["name"]
        if n["inputs"] != [prev]:
            raise SystemExit(f"{name}: only sequential graphs are supported")
        prev = name
        t = op["type"]
        if t == "conv2d":
            if op.get("groups", 1) != 1:
                raise SystemExit(f"{name}: grouped convolutions are not supported")
            c = nn.Conv2d(op["in_channels"], op["out_channels"], op["kernel"], op["stride"],
                          op["padding"], bias=True)
            c.weight.data = torch.from_numpy(w[f"{name}.weight"].copy())
            b = w.get(f"{name}.bias")
            c.bias.data = torch.from_numpy(b.copy()) if b is not None else torch.zeros(op["out_channels"])
            mods.append(c)
        elif t == "batch_norm":
            c = mods[-1]
            scale = w[f"{name}.weight"] / np.sqrt(w[f"{name}.running_var"] + op.get("eps", 1e-5))
            c.weight.data *= torch.from_numpy(scale).view(-1, 1, 1, 1)
            c.bias.data = (c.bias.data - torch.from_numpy(w[f"{name}.running_mean"])) * \
                torch.from_numpy(scale) + torch.from_numpy(w[f"{name}.bias"])
        elif t == "relu":
            mods.append(nn.ReLU())
        elif t == "max_pool2d":
            mods.append(nn.MaxPool2d(op["kernel"], op.get("stride", op["kernel"])))
        elif t == "flatten":
            mods.append(nn.Flatten())
        elif t == "linear":
            l = nn.Linear(op["in_features"], op["out_features"], bias=op.get("bias", True))
            l.weight.data = torch.from_numpy(w[f"{name}.weight"].copy())
            if op.get("bias", True):
                l.bias.data = torch.from_numpy(w[f"{name}.bias"].copy())
            mods.append(l)
        elif t == "dropout":
            continue
        else:
            raise SystemExit(f"{name}: node type {t} is not supported")
    return mods


def quantized(mods, calib, engine):
    """Static int8 on quantized engine `engine`, the last Linear in f32."""
    import copy
    import torch.ao.quantization as tq
    mods = copy.deepcopy(mods)
    torch.backends.quantized.engine = engine
    body, head = mods[:-1], mods[-1]
    m = nn.Sequential(tq.QuantStub(), *body, tq.DeQuantStub(), head).eval()
    pairs = [[str(i), str(i + 1)] for i in range(1, len(body))
             if isinstance(m[i], (nn.Conv2d, nn.Linear)) and isinstance(m[i + 1], nn.ReLU)]
    m = tq.fuse_modules(m, pairs)
    m.qconfig = tq.get_default_qconfig(engine)
    m[len(m) - 1].qconfig = None
    tq.prepare(m, inplace=True)
    with torch.no_grad():
        for i in range(0, len(calib), 128):
            m(calib[i:i + 128])
    tq.convert(m, inplace=True)
    return m


def accuracy(m, x_test, y_test):
    with torch.no_grad():
        correct = sum((m(x_test[i:i + 500]).argmax(1) == y_test[i:i + 500]).sum().item()
                      for i in range(0, len(x_test), 500))
    return 100.0 * correct / len(x_test)


def speed(m, x_test, runs):
    with torch.no_grad():
        one, batch = x_test[:1], x_test[:256]
        for _ in range(10):
            m(one)
        ts = []
        for _ in range(runs):
            t = time.perf_counter()
            m(one)
            ts.append(time.perf_counter() - t)
        lat = statistics.median(ts) * 1e3
        m(batch)
        tb = []
        for _ in range(max(5, runs // 20)):
            t = time.perf_counter()
            m(batch)
            tb.append(time.perf_counter() - t)
    return lat, 256 / statistics.median(tb)


ENGINES = ["x86", "fbgemm"]


def engine_of(name):
    """Selects the quantized engine a model was made for (a process-wide setting)."""
    if name in ENGINES:
        torch.backends.quantized.engine = name


def one_round(models, x_test, runs):
    out = {}
    for name, m in models.items():
        engine_of(name)
        lat, thr = speed(m, x_test, runs)
        out[f"{name}_latency_ms_b1"] = lat
        out[f"{name}_throughput_b256"] = thr
    # both of PyTorch's x86 engines; the peer's numbers are the better of the two
    out["pytorch_int8_latency_ms_b1"] = min(out[f"{e}_latency_ms_b1"] for e in ENGINES)
    out["pytorch_int8_throughput_b256"] = max(out[f"{e}_throughput_b256"] for e in ENGINES)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("--calib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--serve", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    x_test, y_test = images(a.data, "test")
    calib, _ = images(a.data, "train", a.calib)
    mods = build(a.model)
    models = {"pytorch_f32": nn.Sequential(*mods).eval()}
    for engine in ENGINES:
        models[engine] = quantized(mods, calib, engine)
    fixed = {"torch": torch.__version__, "threads": a.threads}
    for name, m in models.items():
        engine_of(name)
        fixed[f"{name}_accuracy"] = accuracy(m, x_test, y_test)
    # the int8 accuracy of the engine that is faster at batch 1 in a first timing
    lat = {e: engine_of(e) or speed(models[e], x_test, 20)[0] for e in ENGINES}
    fixed["pytorch_int8_accuracy"] = fixed[f"{min(ENGINES, key=lat.get)}_accuracy"]
    if not a.serve:
        print(json.dumps({**fixed, **one_round(models, x_test, a.runs)}))
        return
    serve(fixed, lambda: one_round(models, x_test, a.runs))


if __name__ == "__main__":
    main()
