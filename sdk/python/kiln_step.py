"""Write a kiln step in Python.

A step is a function that takes a :class:`Step` (its params, input and output paths) and
returns its metrics as a dict (or None). Export it as the component's ``run`` with
:func:`component`:

.. code-block:: python

    import kiln_step

    def double(step: kiln_step.Step):
        x = step.param("x")
        kiln_step.info(f"doubling {x}")
        with open(step.output("result"), "w") as f:
            f.write(f"{2 * x}\\n")
        return {"x2": 2 * x}

    WitWorld = kiln_step.component(double, params=[
        kiln_step.param("x", "float", description="what to double"),
    ])

``python3 sdk/python/kiln_step.py build app -o app.wasm`` compiles the module ``app`` (and
this helper, which is compiled into each component) into a component of the kiln step world
with componentize-py, then writes the declared params into it (a ``kiln:params`` custom
section) so that ``kiln validate`` checks each step's ``with:`` against them. The
declaration is read from the source without running it, so ``params=[...]`` is written with
literal values. Raise :class:`InvalidInput` or :class:`InvalidParams` for the step's own
typed errors; any other exception is a ``failed`` step error with the exception's text. See
docs/python-steps.md.
"""

import math

try:
    import wit_world
    from componentize_py_types import Err
    from wit_world.imports import log as _log
    from wit_world.imports import types as _t
except ImportError:  # on the host, for `python3 kiln_step.py build|declare`
    wit_world = None


class InvalidParams(Exception):
    """A parameter is missing or has a value the step cannot use."""


class InvalidInput(Exception):
    """An input is missing, malformed or fails the step's checks."""


def _plain(value):
    """A world value as a plain Python value (str, int, float, bool or a list of them)."""
    return value.value


class Step:
    """What a step is given for one attempt."""

    def __init__(self, ctx):
        self.id = ctx.step
        self.params = {name: _plain(value) for name, value in ctx.params}
        self.inputs = {a.name: a.path for a in ctx.inputs}
        self.outputs = {a.name: a.path for a in ctx.outputs}
        self.returned = {}

    def param(self, name, default=None):
        """Param ``name``; ``default`` when the step has none by that name (None: an error).

        Declared defaults are filled in by kiln before the step runs.
        """
        if name in self.params:
            return self.params[name]
        if default is not None:
            return default
        given = ", ".join(sorted(self.params)) or "none"
        raise InvalidParams(f"param `{name}` is missing (the step was given: {given})")

    def input(self, name):
        """The path of input ``name`` (under /in): a file or a folder."""
        if name not in self.inputs:
            raise InvalidInput(f"the step has no input `{name}`")
        return self.inputs[name]

    def output(self, name):
        """The path to write output ``name`` at (under /out)."""
        if name not in self.outputs:
            raise InvalidParams(f"the step has no output `{name}`")
        return self.outputs[name]

    def give(self, name, data):
        """Returns output ``name`` as bytes (or text) instead of writing the file."""
        self.output(name)
        self.returned[name] = data.encode() if isinstance(data, str) else bytes(data)


def debug(message):
    """Writes a debugging detail to the step's log."""
    _log.log(_log.Level.DEBUG, str(message))


def info(message):
    """Writes progress to the step's log."""
    _log.log(_log.Level.INFO, str(message))


def warn(message):
    """Writes a warning to the step's log."""
    _log.log(_log.Level.WARN, str(message))


def error(message):
    """Writes an error to the step's log."""
    _log.log(_log.Level.ERROR, str(message))


def _step_error(kind, exc):
    return Err(_t.StepError(kind=kind, message=str(exc) or type(exc).__name__))


PARAM_TYPES = ("string", "int", "float", "bool", "list[string]", "list[int]", "list[float]", "list[bool]")


def param(name, type, default=None, description=None):
    """Declares a param for :func:`component`: its name, type (a pipeline param type such as
    ``"float"`` or ``"list[int]"``), default (None: required) and what it means."""
    if type not in PARAM_TYPES:
        raise ValueError(f"param `{name}`: unknown type `{type}` (one of {', '.join(PARAM_TYPES)})")
    entry = {"name": name, "type": type}
    if default is not None:
        entry["default"] = default
    if description:
        entry["description"] = description
    return entry


def component(function, params=None):
    """The ``WitWorld`` class componentize-py exports, running ``function`` as the step.

    ``params`` is a list of :func:`param` declarations, written with literal values: the
    build reads them from the source (see ``build``) for kiln to check ``with:`` against.
    """

    class _World(wit_world.WitWorld):
        def run(self, ctx):
            step = Step(ctx)
            try:
                metrics = function(step) or {}
            except InvalidParams as e:
                raise _step_error(_t.ErrorKind.INVALID_PARAMS, e)
            except InvalidInput as e:
                raise _step_error(_t.ErrorKind.INVALID_INPUT, e)
            except Err:
                raise
            except Exception as e:  # noqa: BLE001 - every other failure is the step's
                raise _step_error(_t.ErrorKind.FAILED, f"{type(e).__name__}: {e}")
            for name, value in metrics.items():
                if not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise _step_error(
                        _t.ErrorKind.FAILED, f"metric `{name}` = {value!r} is not a finite number"
                    )
            return _t.Success(
                metrics=[_t.Metric(name=n, value=float(v)) for n, v in sorted(metrics.items())],
                outputs=sorted(step.returned.items()),
            )

    return _World


# ---- On the host: build a component and write its params declaration ----------------------

SECTION = "kiln:params"


def _leb128(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_leb128(data, pos):
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos


def declared_params(source_path):
    """The params a step module declares in ``component(..., params=[...])``, read with
    ``ast`` (the module is not run). None when it calls ``component`` without params."""
    import ast

    with open(source_path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=source_path)

    def named(call, name):
        func = call.func
        return isinstance(func, ast.Name) and func.id == name or (
            isinstance(func, ast.Attribute) and func.attr == name
        )

    found = None
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and named(node, "component")):
            continue
        spec = [k.value for k in node.keywords if k.arg == "params"] or node.args[1:2]
        if not spec:
            continue
        if found is not None:
            raise SystemExit(f"{source_path}: `component(..., params=...)` is called twice")
        if not isinstance(spec[0], ast.List):
            raise SystemExit(f"{source_path}:{spec[0].lineno}: `params=` must be a literal list of `param(...)` calls")
        found = []
        for item in spec[0].elts:
            if not (isinstance(item, ast.Call) and named(item, "param")):
                raise SystemExit(f"{source_path}:{item.lineno}: each entry of `params=` must be a `param(...)` call")
            try:
                args = [ast.literal_eval(a) for a in item.args]
                kwargs = {k.arg: ast.literal_eval(k.value) for k in item.keywords}
                found.append(param(*args, **kwargs))
            except (ValueError, TypeError) as e:
                raise SystemExit(
                    f"{source_path}:{item.lineno}: `param(...)` needs literal values kiln can read without running the step: {e}"
                ) from None
    return found


def declare(component_path, params):
    """Writes ``params`` into the component as its ``kiln:params`` section, replacing one
    that is there; atomically (a temporary file renamed over it)."""
    import json
    import os

    with open(component_path, "rb") as f:
        data = f.read()
    if data[:4] != b"\0asm":
        raise SystemExit(f"{component_path}: not a wasm file")
    kept, pos = bytearray(data[:8]), 8
    while pos < len(data):
        start = pos
        section_id = data[pos]
        size, pos = _read_leb128(data, pos + 1)
        end = pos + size
        if section_id == 0:
            name_len, name_at = _read_leb128(data, pos)
            if data[name_at : name_at + name_len] == SECTION.encode():
                pos = end
                continue
        kept += data[start:end]
        pos = end
    body = json.dumps({"version": 1, "params": params}, separators=(",", ":")).encode()
    name = SECTION.encode()
    content = _leb128(len(name)) + name + body
    kept += b"\0" + _leb128(len(content)) + content
    tmp = f"{component_path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(kept)
    os.replace(tmp, component_path)


def _main(argv):
    import argparse
    import os
    import subprocess
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(
        prog="kiln_step.py", description="Build a kiln step written in Python into a component."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="componentize-py, then write the params declaration")
    build.add_argument("module", help="the step's module, such as `report` for report.py")
    build.add_argument("-o", "--output", required=True, help="the component file to write")
    build.add_argument("-p", "--path", action="append", default=[], help="more module folders")
    build.add_argument("--wit", default=os.path.join(here, "..", "..", "wit"), help="the kiln step world's WIT folder")
    declare_cmd = commands.add_parser("declare", help="write a module's declared params into a built component")
    declare_cmd.add_argument("source", help="the step's .py file")
    declare_cmd.add_argument("component", help="the component built from it")
    args = parser.parse_args(argv)

    if args.command == "declare":
        params = declared_params(args.source)
        declare(args.component, params or [])
        return 0
    source = f"{args.module.replace('.', '/')}.py"
    found = [os.path.join(d, source) for d in [".", *args.path] if os.path.isfile(os.path.join(d, source))]
    if not found:
        raise SystemExit(f"no {source} in . or {', '.join(args.path) or 'any -p folder'}")
    if not os.path.isfile(os.path.join(args.wit, "step.wit")):
        raise SystemExit(f"no step.wit in {args.wit}: pass --wit with kiln's wit/ folder")
    params = declared_params(found[0])
    out_dir = os.path.dirname(args.output)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    command = ["componentize-py", "-d", args.wit, "-w", "kiln:step/step", "componentize", args.module, "-p", "."]
    for extra in [*args.path, here]:
        command += ["-p", extra]
    command += ["-o", args.output]
    done = subprocess.run(command)
    if done.returncode != 0:
        return done.returncode
    if params is not None:
        declare(args.output, params)
        print(f"declared {len(params)} param(s) in {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_main(sys.argv[1:]))
