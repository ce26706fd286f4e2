"""Write the z-score benchmark's input: a CSV of ROWS rows and 5 float columns x0..x4.

    python3 make_data.py OUT.csv [ROWS] [SEED]      # defaults: 10000 rows, seed 7

Deterministic: the same ROWS and SEED give the same bytes on every machine (Python's
Mersenne Twister seeded with an int, values written with 6 decimals, `\\n` line endings).
Column j is normal with mean 10 * j and standard deviation j + 1.
"""

import random
import sys


def main(argv):
    out = argv[0]
    rows = int(argv[1]) if len(argv) > 1 else 10_000
    seed = int(argv[2]) if len(argv) > 2 else 7
    rng = random.Random(seed)
    with open(out, "w", newline="") as f:
        f.write("x0,x1,x2,x3,x4\n")
        for _ in range(rows):
            f.write(",".join(f"{rng.gauss(10.0 * j, j + 1.0):.6f}" for j in range(5)) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
