# A stand-in for training: the model and its scores follow from the flags; 0 epochs fails.
import argparse
import json

parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, required=True)
parser.add_argument("--epochs", type=int, required=True)
parser.add_argument("--model", required=True)
parser.add_argument("--scores", required=True)
args = parser.parse_args()
if args.epochs < 1:
    raise SystemExit("epochs must be at least 1")
with open(args.model, "w") as f:
    f.write(f"weights lr={args.lr} epochs={args.epochs}\n")
with open(args.scores, "w") as f:
    json.dump({"accuracy": 1 - args.lr / args.epochs, "loss": args.lr / args.epochs}, f)
