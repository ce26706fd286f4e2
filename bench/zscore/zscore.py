"""Replace one column of a CSV by its z-scores, standard library only (csv, statistics).

    python3 zscore.py --in data=in.csv --out data=out.csv --param column=x0 [--param salt=N]

The same step as `rust/src/main.rs`, with the same arguments (kiln's calling convention for
command steps): `(x - mean) / sd` with the population standard deviation, written with 6
decimals; every other cell is copied as it is. Params other than `column` are ignored.

`zscore_file` is the step's work without the command line, for a caller that is not a process
(a Python component).
"""

import csv
import statistics
import sys


def zscore_rows(rows, column):
    """The rows (header first) with `column` z-scored, as new lists."""
    header, body = rows[0], rows[1:]
    try:
        col = header.index(column)
    except ValueError:
        raise ValueError(f"no column `{column}` (the header is `{','.join(header)}`)")
    values = [float(row[col]) for row in body]
    mean = statistics.fmean(values)
    sd = statistics.pstdev(values, mean)
    if sd == 0:
        raise ValueError(f"column `{column}` has no spread")
    out = [header]
    for row, v in zip(body, values):
        row = list(row)
        row[col] = f"{(v - mean) / sd:.6f}"
        out.append(row)
    return out


def zscore_file(src, dst, column):
    """Reads the CSV at `src`, writes it with `column` z-scored to `dst`; returns the rows."""
    with open(src, newline="") as f:
        rows = [row for row in csv.reader(f) if row]
    out = zscore_rows(rows, column)
    with open(dst, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(out)
    return len(out) - 1


def parse_args(argv):
    """`--in`, `--out` and `--param` NAME=VALUE pairs, by flag."""
    pairs = {"--in": {}, "--out": {}, "--param": {}}
    it = iter(argv)
    for flag in it:
        if flag not in pairs:
            raise SystemExit(f"zscore: unknown argument `{flag}`")
        name, sep, value = next(it, "").partition("=")
        if not sep:
            raise SystemExit(f"zscore: `{flag}` needs NAME=VALUE")
        pairs[flag][name] = value
    return pairs


def main(argv):
    args = parse_args(argv)
    try:
        src, dst = args["--in"]["data"], args["--out"]["data"]
        column = args["--param"]["column"]
    except KeyError as e:
        raise SystemExit(f"zscore: missing {e}")
    rows = zscore_file(src, dst, column)
    print(f"zscore: column {column}, {rows} rows")


if __name__ == "__main__":
    main(sys.argv[1:])
