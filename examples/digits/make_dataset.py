"""Writes scikit-learn's bundled 8x8 digits set (1797 images, no download) as a CSV:
one row per image, 64 pixel values (0-16) then the label.

usage: python3 make_dataset.py OUT_DIR
"""
import os
import sys

from sklearn.datasets import load_digits


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "."
    os.makedirs(out, exist_ok=True)
    d = load_digits()
    path = os.path.join(out, "digits.csv")
    with open(path, "w") as f:
        for x, y in zip(d.data, d.target):
            f.write(",".join(str(int(v)) for v in x) + f",{int(y)}\n")
    print(f"wrote {len(d.target)} images to {path}")


if __name__ == "__main__":
    main()
