# A stand-in for a training script: its "model" and its scores follow from its flags.
import argparse
import json

parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, required=True)
parser.add_argument("--epochs", type=int, required=True)
parser.add_argument("--model", required=True)
parser.add_argument("--scores", required=True)
args = parser.parse_args()
# The pipeline names the file: a tool that insists on an extension gets it.
assert args.model.endswith("/model.npz"), args.model

with open(args.model, "w") as f:
    f.write(f"weights lr={args.lr} epochs={args.epochs}\n")
with open(args.scores, "w") as f:
    json.dump({"accuracy": 1 - args.lr / args.epochs, "epochs": args.epochs}, f)
