"""`@NAME@`: a kiln step in Python, made by `kiln new step --python`.

It reads input ``data`` (a text file), returns output ``summary`` (one line: the label, the
number of lines and of bytes) and reports the line count as metric ``lines``. Make it your
step: the inputs, outputs and params it uses must match the step's ``inputs:``, ``outputs:``
and ``with:`` in the pipeline, and the params it reads are declared in ``component`` below
(with literal values), so that ``kiln validate`` checks every ``with:`` against them. Only
the standard library is available; see docs/python-steps.md in kiln's repository.
"""

import kiln_step


def run(step: kiln_step.Step):
    # Inputs are read-only files or folders under /in.
    path = step.input("data")
    try:
        with open(path, "rb") as f:
            data = f.read()
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise kiln_step.InvalidInput(f"{path}: {e}")
    # Declared defaults are filled in by kiln: `label` is always there.
    label = step.param("label")
    lines = len(text.splitlines())
    kiln_step.info(f"{label}: {lines} lines")
    # A small output can be given as bytes; a big one is written to step.output("summary").
    step.give("summary", f"{label}: {lines} lines, {len(data)} bytes\n")
    return {"lines": lines}


WitWorld = kiln_step.component(
    run,
    params=[
        kiln_step.param("label", "string", default="data", description="a name for the input, kept in the summary"),
    ],
)
