"""PyTorch peer of `squeeze bench train|infer`: the identical benchmark CNN
(conv32-BN-ReLU-pool, conv64-BN-ReLU-pool, fc128, fc10; 3x3 convs, padding 1), the same
optimizer (SGD, momentum 0.9, Nesterov, weight decay 5e-4 on conv/linear weights), batch 128,
real Fashion-MNIST images, `--threads` intra-op threads. Prints one JSON line."""
import argparse, gzip, json, os, statistics, time

import numpy as np
import torch
import torch.nn as nn


def load_images(data_dir, n):
    with gzip.open(os.path.join(data_dir, "train-images-idx3-ubyte.gz")) as f:
        x = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 1, 28, 28)[:n]
    with gzip.open(os.path.join(data_dir, "train-labels-idx1-ubyte.gz")) as f:
        y = np.frombuffer(f.read(), dtype=np.uint8, offset=8)[:n]
    x = (x.astype(np.float32) / 255.0 - 0.2860) / 0.3530
    return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))


def net():
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10),
    )


def median_time(warmup, runs, f):
    for _ in range(warmup):
        f()
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def train(args):
    batch = 128
    x, y = load_images(args.data, batch * (args.steps + 5))
    m = net().train()
    decay = [p for n, p in m.named_parameters() if n.endswith("weight") and p.dim() > 1]
    rest = [p for n, p in m.named_parameters() if not (n.endswith("weight") and p.dim() > 1)]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": rest, "weight_decay": 0}],
                          lr=0.05, momentum=0.9, nesterov=True)
    loss_fn = nn.CrossEntropyLoss()
    i = [0]

    def step():
        j = i[0] % (args.steps + 5)
        i[0] += 1
        xb, yb = x[j * batch:(j + 1) * batch], y[j * batch:(j + 1) * batch]
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(m(xb), yb)
        loss.backward()
        opt.step()

    t = median_time(5, args.steps, step)
    return {"s_per_epoch": t * 60000 / batch, "ms_per_step": t * 1e3, "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def infer(args):
    m = net().eval()
    x1 = torch.randn(1, 1, 28, 28)
    x256 = torch.randn(256, 1, 28, 28)
    with torch.inference_mode():
        t1 = median_time(10, args.steps * 10, lambda: m(x1))
        t256 = median_time(2, args.steps, lambda: m(x256))
    return {"latency_ms_b1": t1 * 1e3, "throughput_b256": 256 / t256, "torch": torch.__version__,
            "threads": torch.get_num_threads()}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["train", "infer"], required=True)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    print(json.dumps(train(a) if a.mode == "train" else infer(a)))
