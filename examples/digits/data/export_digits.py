#!/usr/bin/env python3
"""Export scikit-learn's 8x8 digits data set to digits.csv (one-off).

The data ships inside the scikit-learn package (no download). The pipeline itself never
needs scikit-learn: this script only regenerates the committed CSV.

    pip install scikit-learn
    python3 examples/digits/data/export_digits.py            # writes data/digits.csv
    python3 examples/digits/data/export_digits.py --out x.csv

Output: header `pixel_0,...,pixel_63,label`, then 1797 rows of integers (pixels 0..16,
label 0..9), in scikit-learn's order, `\n` line endings.
"""

import argparse
import os
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits.csv"),
        help="where to write the CSV (default: digits.csv next to this script)",
    )
    args = parser.parse_args()

    try:
        from sklearn.datasets import load_digits
    except ImportError:
        print("error: scikit-learn is needed to export the data: pip install scikit-learn",
              file=sys.stderr)
        return 2

    digits = load_digits()
    data, target = digits.data, digits.target
    assert data.shape == (1797, 64), data.shape

    header = ",".join([f"pixel_{i}" for i in range(64)] + ["label"])
    lines = [header]
    for row, label in zip(data, target):
        pixels = [int(v) for v in row]
        assert all(float(p) == v for p, v in zip(pixels, row)), "non-integer pixel"
        lines.append(",".join(str(v) for v in pixels + [int(label)]))

    with open(args.out, "w", newline="\n") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {len(lines) - 1} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
