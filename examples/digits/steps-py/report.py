"""`report`: the digits run as a short Markdown report, a kiln step written in Python.

Inputs: ``best`` (pick's best.json) and ``candidates`` (the folder of evaluate's metrics
files, one per training instance, named 0, 1, ...). Output: ``report`` (report.md). Metric:
``best_accuracy``. Param: ``title`` (the report's heading). Built into a component of the
kiln step world by ``kiln_step.py build`` (componentize-py, then the params declaration; see
pipeline.yaml); the shared helper ``kiln_step`` (sdk/python) is compiled into it.
"""

import json
import os

import kiln_step


def read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise kiln_step.InvalidInput(f"{path}: {e}")


def report(step: kiln_step.Step):
    best = read_json(step.input("best"))
    folder = step.input("candidates")
    rows = []
    for name in sorted(os.listdir(folder), key=lambda n: (len(n), n)):
        path = os.path.join(folder, name)
        if os.path.isdir(path):
            path = os.path.join(path, "metrics.json")
        metrics = read_json(path)
        train = metrics.get("train", {})
        rows.append((name, train.get("lr"), metrics["accuracy"], metrics["correct"], metrics["n"]))
    if not rows:
        raise kiln_step.InvalidInput(f"{folder}: no candidates")

    lines = [
        f"# {step.param('title')}: training report",
        "",
        "| instance | learning rate | test accuracy | correct |",
        "|---|---|---|---|",
    ]
    for name, lr, accuracy, correct, n in rows:
        mark = " **best**" if name == best["instance"] else ""
        lines.append(f"| {name}{mark} | {lr} | {accuracy:.4f} | {correct}/{n} |")
    lines += ["", f"Best: instance {best['instance']} with test accuracy {best['accuracy']:.4f}.", ""]
    step.give("report", "\n".join(lines))
    kiln_step.info(f"{len(rows)} candidates, best accuracy {best['accuracy']:.4f}")
    return {"best_accuracy": best["accuracy"]}


WitWorld = kiln_step.component(
    report,
    params=[
        kiln_step.param("title", "string", default="digits", description="the report's heading"),
    ],
)
