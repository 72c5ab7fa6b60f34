"""Writes an MNIST-format dataset of handwriting-like digits, so the example needs no download.

    python3 make_data.py DIR [--train N] [--test N]   -> DIR/mnist.npz (Keras' MNIST layout)
    python3 make_data.py --png DIGIT FILE             -> one 28x28 grayscale PNG of DIGIT

`mnist.npz` holds x_train (N, 28, 28) uint8, y_train (N,) uint8, x_test, y_test: what
`tf.keras.datasets.mnist.load_data(path=...)` reads. Each image is a digit drawn from a
5x7 stroke font, scaled, thickened, slanted, shifted and blurred at random (numpy only).
"""
import argparse
import os
import struct
import zlib

import numpy as np

FONT = {
    0: ["01110", "10001", "10011", "10101", "11001", "10001", "01110"],
    1: ["00100", "01100", "00100", "00100", "00100", "00100", "01110"],
    2: ["01110", "10001", "00001", "00010", "00100", "01000", "11111"],
    3: ["11111", "00010", "00100", "00010", "00001", "10001", "01110"],
    4: ["00010", "00110", "01010", "10010", "11111", "00010", "00010"],
    5: ["11111", "10000", "11110", "00001", "00001", "10001", "01110"],
    6: ["00110", "01000", "10000", "11110", "10001", "10001", "01110"],
    7: ["11111", "00001", "00010", "00100", "01000", "01000", "01000"],
    8: ["01110", "10001", "10001", "01110", "10001", "10001", "01110"],
    9: ["01110", "10001", "10001", "01111", "00001", "00010", "01100"],
}


def draw(digit, rng):
    glyph = np.array([[int(c) for c in row] for row in FONT[digit]], dtype=np.float32)
    img = np.kron(glyph, np.ones((3, 3), dtype=np.float32))  # 21 x 15
    if rng.random() < 0.5:  # a thicker pen
        img = np.maximum(img, np.roll(img, 1, axis=1))
    canvas = np.zeros((28, 28), dtype=np.float32)
    top, left = rng.integers(1, 6), rng.integers(3, 11)
    canvas[top : top + 21, left : left + 15] = img
    slant = rng.uniform(-0.25, 0.25)  # shear each row sideways
    for r in range(28):
        canvas[r] = np.roll(canvas[r], int(round(slant * (r - 14))))
    blurred = canvas.copy()  # a soft edge, as ink on paper
    for dr, dc in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        blurred += 0.25 * np.roll(np.roll(canvas, dr, axis=0), dc, axis=1)
    noisy = blurred * rng.uniform(0.7, 1.0) + rng.normal(0, 0.05, blurred.shape)
    return (np.clip(noisy, 0, 1) * 255).astype(np.uint8)


def dataset(n, rng):
    y = rng.integers(0, 10, n).astype(np.uint8)
    x = np.stack([draw(int(d), rng) for d in y])
    return x, y


def png(path, img):
    """A grayscale PNG (zlib and struct only)."""
    raw = b"".join(b"\x00" + row.tobytes() for row in img)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", img.shape[1], img.shape[0], 8, 0, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", nargs="?")
    ap.add_argument("--train", type=int, default=12000)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--png", nargs=2, metavar=("DIGIT", "FILE"))
    args = ap.parse_args()
    rng = np.random.default_rng(2019)
    if args.png:
        png(args.png[1], draw(int(args.png[0]), rng))
        print(f"wrote a {args.png[0]} to {args.png[1]}")
        return
    if not args.dir:
        ap.error("name the folder to write mnist.npz into, or --png DIGIT FILE")
    os.makedirs(args.dir, exist_ok=True)
    (x_train, y_train), (x_test, y_test) = dataset(args.train, rng), dataset(args.test, rng)
    np.savez_compressed(os.path.join(args.dir, "mnist.npz"), x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    print(f"wrote {args.train} training and {args.test} test images to {args.dir}/mnist.npz")


if __name__ == "__main__":
    main()
