#!/usr/bin/env python3
"""Train a softmax-regression classifier on the digits training set (the digits example's
training step).

    python3 train.py --train train.csv --lr 0.1 --epochs 50 --seed 0 --out model/

Needs numpy only. When PyTorch is importable and torch.cuda.is_available(), it trains the
same model with PyTorch on the GPU instead (`--device auto`, the default); `--device cpu`
always uses numpy, `--device cuda` insists on the GPU (exit 2 when there is none).

Input: train.csv as written by the `preprocess` step (header `pixel_0..pixel_63,label`,
pixels scaled to [0, 1], integer labels 0..9).

Output, in --out DIR:
  weights.csv     the model, read by the `evaluate` step: header `feature,class_0..class_9`,
                  then rows `pixel_0` .. `pixel_63` (the weights w[k][c]) and `bias` (b[c]);
                  the score of class c is b[c] + sum_k x[k] * w[k][c]. Values are written
                  with Python's shortest round-trip repr.
  train_log.json  lr, epochs, seed, batch_size, l2, device, rows, the mean cross-entropy
                  loss and the training accuracy after every epoch.

With --metrics FILE, also the last epoch's numbers as a flat JSON object, the form a kiln
container step reports metrics in (`metrics:` in the pipeline): {"loss": .., "train_accuracy": ..}.

Training: weights start from N(0, 0.01^2) drawn by numpy's PCG64 seeded with --seed, biases
at 0; every epoch visits the rows in a fresh permutation from the same generator, in
mini-batches of --batch-size (0 = full batch), taking a gradient step of the mean
cross-entropy plus l2/2 * |W|^2. The numpy and PyTorch paths draw the same initial weights
and the same permutations, and both compute in float64.

Determinism: on the CPU the same inputs and arguments give the same output bytes (BLAS is
pinned to one thread; results can still differ between CPU kinds or numpy builds). The
PyTorch path agrees with the numpy path up to floating-point rounding (on the CPU the weights
differ by about 1e-14 after 50 epochs), not bit for bit.

Exit codes: 0 success, 1 bad input data, 2 bad arguments or --device cuda without a GPU.
"""

import argparse
import json
import os
import sys
import time

# Pin BLAS to one thread before numpy loads: the matrices are tiny, and a fixed thread count
# keeps the floating-point reduction order (and so the output bytes) fixed.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

N_PIXELS = 64
N_CLASSES = 10
HEADER = [f"pixel_{i}" for i in range(N_PIXELS)] + ["label"]


class DataError(Exception):
    """The training data is not what the preprocess step writes."""


def load_train(path):
    """Features (n x 64 float64) and labels (n int64) of a train.csv."""
    try:
        with open(path, encoding="utf-8") as f:
            header = f.readline().strip().lstrip("\ufeff")
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from e
    names = [c.strip() for c in header.split(",")]
    if names != HEADER:
        raise DataError(f"{path}: header is not pixel_0..pixel_63,label")
    try:
        data = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2, dtype=np.float64)
    except ValueError as e:
        raise DataError(f"{path}: {e}") from e
    if data.shape[0] == 0:
        raise DataError(f"{path}: no rows")
    if data.shape[1] != N_PIXELS + 1:
        raise DataError(f"{path}: {data.shape[1]} columns, expected {N_PIXELS + 1}")
    x = data[:, :N_PIXELS]
    labels = data[:, N_PIXELS]
    if not np.all(np.isfinite(x)):
        raise DataError(f"{path}: a feature is not a finite number")
    if not np.all((labels == np.round(labels)) & (labels >= 0) & (labels < N_CLASSES)):
        raise DataError(f"{path}: a label is not an integer in 0..9")
    return x, labels.astype(np.int64)


def batches(rng, n, batch_size):
    """The index batches of one epoch."""
    order = rng.permutation(n)
    size = n if batch_size <= 0 else batch_size
    return [order[i:i + size] for i in range(0, n, size)]


def train_numpy(x, y, lr, epochs, seed, batch_size, l2, report):
    """Mini-batch gradient descent with numpy; (W, b, losses, accuracies)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0.0, 0.01, size=(N_PIXELS, N_CLASSES))
    b = np.zeros(N_CLASSES)
    onehot = np.eye(N_CLASSES)[y]
    losses, accs = [], []
    for epoch in range(1, epochs + 1):
        for idx in batches(rng, len(y), batch_size):
            xb = x[idx]
            logits = xb @ w + b
            logits -= logits.max(axis=1, keepdims=True)
            p = np.exp(logits)
            p /= p.sum(axis=1, keepdims=True)
            g = (p - onehot[idx]) / len(idx)
            w -= lr * (xb.T @ g + l2 * w)
            b -= lr * g.sum(axis=0)
        logits = x @ w + b
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        loss = float(-logp[np.arange(len(y)), y].mean() + 0.5 * l2 * (w * w).sum())
        acc = float((logits.argmax(axis=1) == y).mean())
        losses.append(loss)
        accs.append(acc)
        report(epoch, loss, acc)
    return w, b, losses, accs


def train_torch(torch, device, x, y, lr, epochs, seed, batch_size, l2, report):
    """The same algorithm with PyTorch on `device`; same initial weights and permutations."""
    rng = np.random.default_rng(seed)
    w0 = rng.normal(0.0, 0.01, size=(N_PIXELS, N_CLASSES))
    dt = torch.float64
    xt = torch.tensor(x, dtype=dt, device=device)
    yt = torch.tensor(y, dtype=torch.int64, device=device)
    onehot = torch.eye(N_CLASSES, dtype=dt, device=device)[yt]
    w = torch.tensor(w0, dtype=dt, device=device)
    b = torch.zeros(N_CLASSES, dtype=dt, device=device)
    rows = torch.arange(len(y), device=device)
    losses, accs = [], []
    with torch.no_grad():
        for epoch in range(1, epochs + 1):
            for idx in batches(rng, len(y), batch_size):
                it = torch.as_tensor(idx, device=device)
                xb = xt[it]
                p = torch.softmax(xb @ w + b, dim=1)
                g = (p - onehot[it]) / len(idx)
                w -= lr * (xb.T @ g + l2 * w)
                b -= lr * g.sum(dim=0)
            logits = xt @ w + b
            logp = torch.log_softmax(logits, dim=1)
            loss = float(-logp[rows, yt].mean() + 0.5 * l2 * (w * w).sum())
            acc = float((logits.argmax(dim=1) == yt).double().mean())
            losses.append(loss)
            accs.append(acc)
            report(epoch, loss, acc)
    return w.cpu().numpy(), b.cpu().numpy(), losses, accs


def pick_device(choice):
    """(torch module or None, torch device or None, description) for --device."""
    if choice == "cpu":
        return None, None, "cpu (numpy)"
    try:
        # cuBLAS needs this to be deterministic; it must be set before CUDA starts.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        import torch
    except Exception as e:  # ImportError, or a broken install (missing shared libraries)
        if choice == "cuda":
            raise SystemExit(_usage_error(f"--device cuda needs PyTorch, and `import torch` failed: {e}"))
        return None, None, "cpu (numpy)"
    if not torch.cuda.is_available():
        if choice == "cuda":
            raise SystemExit(_usage_error(
                f"--device cuda: PyTorch {torch.__version__} is installed but "
                "torch.cuda.is_available() is False (no GPU or no CUDA driver)"))
        return None, None, "cpu (numpy)"
    torch.use_deterministic_algorithms(True, warn_only=True)
    return torch, torch.device("cuda"), f"cuda ({torch.cuda.get_device_name(0)})"


def _usage_error(msg):
    print(f"train.py: error: {msg}", file=sys.stderr)
    return 2


def write_model(out, w, b, log):
    os.makedirs(out, exist_ok=True)
    lines = [",".join(["feature"] + [f"class_{c}" for c in range(N_CLASSES)])]
    for k in range(N_PIXELS):
        lines.append(",".join([f"pixel_{k}"] + [repr(float(v)) for v in w[k]]))
    lines.append(",".join(["bias"] + [repr(float(v)) for v in b]))
    with open(os.path.join(out, "weights.csv"), "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out, "train_log.json"), "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(log) + "\n")


def positive_float(text):
    v = float(text)
    if not (v > 0 and np.isfinite(v)):
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return v


def positive_int(text):
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return v


def non_negative_int(text):
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return v


def non_negative_float(text):
    v = float(text)
    if not (v >= 0 and np.isfinite(v)):
        raise argparse.ArgumentTypeError(f"{text} is not a number >= 0")
    return v


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="train.py",
        description="Train a softmax-regression digits classifier (numpy, or PyTorch on a GPU).")
    parser.add_argument("--train", required=True, help="train.csv written by preprocess")
    parser.add_argument("--out", required=True, help="folder to write weights.csv and train_log.json")
    parser.add_argument("--lr", type=positive_float, default=0.1, help="learning rate (default 0.1)")
    parser.add_argument("--epochs", type=positive_int, default=50, help="epochs (default 50)")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="seed of the initial weights and the batch order (default 0)")
    parser.add_argument("--batch-size", type=non_negative_int, default=32,
                        help="mini-batch size, 0 for full batch (default 32)")
    parser.add_argument("--l2", type=non_negative_float, default=0.0,
                        help="L2 penalty on the weights (default 0)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: the GPU through PyTorch when available, else numpy (default)")
    parser.add_argument("--metrics", help="also write the final loss and training accuracy here, as JSON")
    parser.add_argument("--log-every", type=positive_int, default=10,
                        help="print progress every N epochs (default 10)")
    args = parser.parse_args(argv)

    torch, device, device_name = pick_device(args.device)
    print(f"device: {device_name}", flush=True)

    try:
        x, y = load_train(args.train)
    except DataError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 1
    print(f"train: {len(y)} rows, lr {args.lr}, epochs {args.epochs}, seed {args.seed}, "
          f"batch size {args.batch_size or len(y)}, l2 {args.l2}", flush=True)

    def report(epoch, loss, acc):
        if epoch % args.log_every == 0 or epoch == args.epochs or epoch == 1:
            print(f"epoch {epoch:4d}/{args.epochs}  loss {loss:.6f}  train accuracy {acc:.4f}",
                  flush=True)

    started = time.perf_counter()
    hyper = (args.lr, args.epochs, args.seed, args.batch_size, args.l2, report)
    if torch is None:
        w, b, losses, accs = train_numpy(x, y, *hyper)
    else:
        w, b, losses, accs = train_torch(torch, device, x, y, *hyper)
    elapsed = time.perf_counter() - started
    if not (np.all(np.isfinite(w)) and np.all(np.isfinite(b))):
        print(f"train.py: error: training diverged (lr {args.lr} is too large?)", file=sys.stderr)
        return 1

    # No timings in the log: it stays the same bytes for the same inputs (on the CPU).
    log = {
        "model": "softmax-regression",
        "lr": args.lr,
        "epochs": args.epochs,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "l2": args.l2,
        "device": device_name,
        "rows": int(len(y)),
        "loss": [round(v, 6) for v in losses],
        "train_accuracy": [round(v, 6) for v in accs],
    }
    write_model(args.out, w, b, log)
    if args.metrics:
        with open(args.metrics, "w", encoding="utf-8", newline="\n") as f:
            f.write(json.dumps({"loss": log["loss"][-1], "train_accuracy": log["train_accuracy"][-1]}) + "\n")
    print(f"done in {elapsed:.2f}s: final loss {losses[-1]:.6f}, train accuracy {accs[-1]:.4f}; "
          f"model written to {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
