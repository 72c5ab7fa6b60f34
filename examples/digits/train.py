"""A small multilayer perceptron on the 8x8 digits set, in numpy alone.

Reads $AIC_DATA_DIR/digits.csv (see make_dataset.py), trains with minibatch SGD, and
writes a checkpoint to $AIC_OUTPUT_DIR/model.npz after every epoch. If a checkpoint is
already there (a restarted allocation), training resumes from it.

usage: python3 train.py [--epochs N] [--hidden H] [--lr LR] [--seed S]
"""
import argparse
import hashlib
import json
import os
import sys
import time

import numpy as np


def load(data_dir):
    path = os.path.join(data_dir, "digits.csv")
    if not os.path.exists(path):
        sys.exit(f"no dataset at {path}: upload it with `aic data put DIR digits` and pass --data digits")
    raw = np.loadtxt(path, delimiter=",")
    return raw[:, :-1] / 16.0, raw[:, -1].astype(int)


def split(x, y, seed):
    idx = np.random.default_rng(seed).permutation(len(y))
    cut = int(len(y) * 0.8)
    return x[idx[:cut]], y[idx[:cut]], x[idx[cut:]], y[idx[cut:]]


def init(hidden, seed):
    rng = np.random.default_rng(seed)
    return {
        "w1": rng.normal(0, np.sqrt(2 / 64), (64, hidden)),
        "b1": np.zeros(hidden),
        "w2": rng.normal(0, np.sqrt(2 / hidden), (hidden, 10)),
        "b2": np.zeros(10),
    }


def forward(p, x):
    h = np.maximum(0, x @ p["w1"] + p["b1"])
    z = h @ p["w2"] + p["b2"]
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return h, e / e.sum(axis=1, keepdims=True)


def gradients(p, x, y):
    """Mean cross-entropy loss over the batch and its gradients."""
    h, prob = forward(p, x)
    n = len(y)
    loss = -np.log(prob[np.arange(n), y] + 1e-12).mean()
    dz = prob
    dz[np.arange(n), y] -= 1
    dz /= n
    grads = {"w2": h.T @ dz, "b2": dz.sum(0)}
    dh = (dz @ p["w2"].T) * (h > 0)
    grads["w1"] = x.T @ dh
    grads["b1"] = dh.sum(0)
    return loss, grads


def step(p, x, y, lr):
    loss, grads = gradients(p, x, y)
    for k in p:
        p[k] -= lr * grads[k]
    return loss


def accuracy(p, x, y):
    return float((forward(p, x)[1].argmax(1) == y).mean())


def arguments(batch=32, batch_help="minibatch size"):
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=batch, help=batch_help)
    ap.add_argument("--sleep", type=float, default=0.0, help="pause after each epoch (to watch a run)")
    return ap.parse_args()


KEYS = ("w1", "b1", "w2", "b2")


def checkpoint(ckpt):
    """(parameters, last finished epoch) from the checkpoint, or None when there is none."""
    if not os.path.exists(ckpt):
        return None
    saved = np.load(ckpt)
    return {k: saved[k] for k in KEYS}, int(saved["epoch"])


def digest(params):
    """A short hash of the parameters: the same on every rank of a data-parallel run."""
    return hashlib.sha256(b"".join(params[k].tobytes() for k in sorted(params))).hexdigest()[:16]


def folders():
    """($AIC_DATA_DIR, $AIC_OUTPUT_DIR created, the checkpoint path)."""
    data_dir = os.environ.get("AIC_DATA_DIR", "data")
    out_dir = os.environ.get("AIC_OUTPUT_DIR", "output")
    os.makedirs(out_dir, exist_ok=True)
    return data_dir, out_dir, os.path.join(out_dir, "model.npz")


def end_of_epoch(params, epoch, epochs, losses, xte, yte, ckpt):
    """Reports the epoch (log line and AIC_PROGRESS) and replaces the checkpoint atomically."""
    acc = accuracy(params, xte, yte)
    print(f"epoch {epoch}/{epochs} loss {np.mean(losses):.4f} test_acc {acc:.4f}")
    print(f"AIC_PROGRESS {epoch}/{epochs}")
    tmp = ckpt + ".tmp.npz"
    np.savez(tmp, epoch=epoch, **params)
    os.replace(tmp, ckpt)


def finish(params, xte, yte, out_dir, ckpt, **metrics):
    """Writes metrics.json and the closing line."""
    acc = accuracy(params, xte, yte)
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump({"test_accuracy": acc, **metrics}, f)
    print(f"final test accuracy {acc:.4f}; checkpoint {ckpt}")


def main():
    args = arguments()
    data_dir, out_dir, ckpt = folders()

    x, y = load(data_dir)
    xtr, ytr, xte, yte = split(x, y, args.seed)
    params, start = init(args.hidden, args.seed), 0
    state = checkpoint(ckpt)
    if state is not None:
        params, start = state
        print(f"resuming from checkpoint at epoch {start}")
    print(f"training on {len(ytr)} images, testing on {len(yte)}; epochs {start + 1}..{args.epochs}")

    rng = np.random.default_rng(args.seed + start)
    t0 = time.time()
    for epoch in range(start + 1, args.epochs + 1):
        order = rng.permutation(len(ytr))
        losses = [step(params, xtr[b], ytr[b], args.lr) for b in np.array_split(order, max(1, len(ytr) // args.batch))]
        end_of_epoch(params, epoch, args.epochs, losses, xte, yte, ckpt)
        time.sleep(args.sleep)
    finish(params, xte, yte, out_dir, ckpt, epochs=args.epochs, seconds=time.time() - t0)


if __name__ == "__main__":
    main()
