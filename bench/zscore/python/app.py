"""The z-score step as a component of the kiln step world, in Python.

The work is `zscore.zscore_file` from `bench/zscore/zscore.py`, the same module the `python3`
process variant runs: componentize-py compiles it (and `kiln_step`) into the component.

    componentize-py -d ../../../wit -w kiln:step/step componentize app \
        -p . -p .. -p ../../../sdk/python -o target/zscore.wasm
"""

import kiln_step
import zscore


def step(s: kiln_step.Step):
    column = s.param("column")
    try:
        rows = zscore.zscore_file(s.input("data"), s.output("data"), column)
    except ValueError as e:
        raise kiln_step.InvalidInput(str(e))
    kiln_step.info(f"zscore: column {column}, {rows} rows")
    return {"rows": rows}


WitWorld = kiln_step.component(step)
