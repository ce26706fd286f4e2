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

    WitWorld = kiln_step.component(double)

``componentize-py -d wit -w kiln:step/step componentize app -p . -p sdk/python -o app.wasm``
compiles the module ``app`` (and this helper, which is compiled into each component) into a
component of the kiln step world. Raise :class:`InvalidInput` or :class:`InvalidParams` for
the step's own typed errors; any other exception is a ``failed`` step error with the
exception's text. See docs/python-steps.md.
"""

import math

import wit_world
from componentize_py_types import Err
from wit_world.imports import log as _log
from wit_world.imports import types as _t


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
        """Param ``name``; ``default`` when the step has none by that name (None: an error)."""
        if name in self.params:
            return self.params[name]
        if default is not None:
            return default
        raise InvalidParams(f"param `{name}` is missing")

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


def component(function):
    """The ``WitWorld`` class componentize-py exports, running ``function`` as the step."""

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
