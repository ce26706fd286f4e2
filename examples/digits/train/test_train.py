#!/usr/bin/env python3
"""Tests of train.py (standard library unittest + numpy; nothing else needed).

    python3 examples/digits/train/test_train.py

When PyTorch is importable, the PyTorch code path is also checked against the numpy one (on
the CPU, so no GPU is needed for that check).
"""

import io
import json
import os
import subprocess
import sys
import tempfile
import unittest
from contextlib import redirect_stderr, redirect_stdout

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import train  # noqa: E402

DIGITS = os.path.join(HERE, "..", "data", "digits.csv")


def write_train_csv(path, rows=300):
    """The first `rows` digits, scaled like the preprocess step does."""
    data = np.loadtxt(DIGITS, delimiter=",", skiprows=1, max_rows=rows)
    lines = [",".join(train.HEADER)]
    for r in data:
        lines.append(",".join([f"{v / 16:.6f}" for v in r[:64]] + [str(int(r[64]))]))
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def run_quiet(argv):
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = train.main(argv)
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


def read(path):
    with open(path, "rb") as f:
        return f.read()


class TrainTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name
        self.csv = os.path.join(self.dir, "train.csv")
        write_train_csv(self.csv)

    def tearDown(self):
        self.tmp.cleanup()

    def train(self, out, *extra):
        argv = ["--train", self.csv, "--out", os.path.join(self.dir, out), "--lr", "0.5",
                "--epochs", "5", "--seed", "3", "--device", "cpu", *extra]
        return run_quiet(argv)

    def test_cpu_is_deterministic_and_writes_the_format(self):
        code, out, _ = self.train("a")
        self.assertEqual(code, 0)
        self.assertIn("device: cpu (numpy)", out)
        self.assertEqual(self.train("b")[0], 0)
        for name in ("weights.csv", "train_log.json"):
            self.assertEqual(read(os.path.join(self.dir, "a", name)),
                             read(os.path.join(self.dir, "b", name)), name)
        self.assertEqual(self.train("c", "--seed", "4")[0], 0)
        self.assertNotEqual(read(os.path.join(self.dir, "a", "weights.csv")),
                            read(os.path.join(self.dir, "c", "weights.csv")))

        lines = read(os.path.join(self.dir, "a", "weights.csv")).decode().splitlines()
        self.assertEqual(lines[0], "feature," + ",".join(f"class_{c}" for c in range(10)))
        self.assertEqual(len(lines), 66)
        self.assertEqual([l.split(",")[0] for l in lines[1:]],
                         [f"pixel_{k}" for k in range(64)] + ["bias"])
        self.assertTrue(all(len(l.split(",")) == 11 for l in lines))

        log = json.loads(read(os.path.join(self.dir, "a", "train_log.json")))
        self.assertEqual(log["lr"], 0.5)
        self.assertEqual(log["epochs"], 5)
        self.assertEqual(log["seed"], 3)
        self.assertEqual(log["device"], "cpu (numpy)")
        self.assertEqual(log["rows"], 300)
        self.assertEqual(len(log["loss"]), 5)
        self.assertLess(log["loss"][-1], log["loss"][0])

    def test_learns(self):
        x, y = train.load_train(self.csv)
        _, _, losses, accs = train.train_numpy(x, y, 0.5, 30, 0, 32, 0.0, lambda *a: None)
        self.assertLess(losses[-1], 0.3)
        self.assertGreater(accs[-1], 0.95)

    def test_full_batch(self):
        code, out, _ = self.train("full", "--batch-size", "0")
        self.assertEqual(code, 0)
        self.assertIn("batch size 300", out)

    def test_bad_data_exits_1(self):
        bad = os.path.join(self.dir, "bad.csv")
        with open(bad, "w") as f:
            f.write("a,b\n1,2\n")
        code, _, err = run_quiet(["--train", bad, "--out", os.path.join(self.dir, "x"),
                                  "--device", "cpu"])
        self.assertEqual(code, 1)
        self.assertIn("header is not pixel_0..pixel_63,label", err)
        code, _, err = run_quiet(["--train", os.path.join(self.dir, "missing.csv"),
                                  "--out", os.path.join(self.dir, "x"), "--device", "cpu"])
        self.assertEqual(code, 1)
        self.assertIn("cannot read", err)

    def test_bad_arguments_exit_2(self):
        for argv in (["--out", "x"], ["--train", self.csv, "--out", "x", "--lr", "-1"],
                     ["--train", self.csv, "--out", "x", "--device", "tpu"],
                     ["--train", self.csv, "--out", "x", "--epochs", "0"]):
            self.assertEqual(run_quiet(argv)[0], 2, argv)

    def test_cuda_without_a_gpu_exits_2(self):
        # A separate process, so that the check does not see a torch imported by another test.
        env = dict(os.environ)
        probe = subprocess.run(
            [sys.executable, "-c", "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"],
            capture_output=True, env=env)
        if probe.returncode == 0:
            self.skipTest("a CUDA GPU is available here")
        p = subprocess.run([sys.executable, os.path.join(HERE, "train.py"), "--train", self.csv,
                            "--out", os.path.join(self.dir, "gpu"), "--device", "cuda"],
                           capture_output=True, text=True, env=env)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn("--device cuda", p.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "gpu")))


class TorchPathTest(unittest.TestCase):
    """The PyTorch path (used on a GPU) computes what the numpy path computes."""

    def test_torch_matches_numpy(self):
        try:
            import torch
        except Exception:
            self.skipTest("PyTorch is not installed")
        with tempfile.TemporaryDirectory() as d:
            csv = os.path.join(d, "train.csv")
            write_train_csv(csv)
            x, y = train.load_train(csv)
        quiet = lambda *a: None  # noqa: E731
        wn, bn, ln, an = train.train_numpy(x, y, 0.5, 5, 1, 32, 1e-3, quiet)
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        for dev in devices:
            wt, bt, lt, at = train.train_torch(torch, torch.device(dev), x, y, 0.5, 5, 1, 32, 1e-3,
                                               quiet)
            np.testing.assert_allclose(wt, wn, rtol=0, atol=1e-9, err_msg=dev)
            np.testing.assert_allclose(bt, bn, rtol=0, atol=1e-9, err_msg=dev)
            np.testing.assert_allclose(lt, ln, rtol=0, atol=1e-9, err_msg=dev)
            self.assertEqual(at, an, dev)


if __name__ == "__main__":
    unittest.main()
