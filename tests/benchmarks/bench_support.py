"""What the benchmark scripts' tests share: loading a script of ``benchmarks/`` (a folder of scripts, not a
package) as a module."""

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def script_module(name: str) -> Iterator[ModuleType]:
    """``benchmarks/NAME.py`` as module ``NAME``, registered in sys.modules while in use, as its dataclasses need;
    ``benchmarks/`` is on sys.path meanwhile, so that the spawned workers of its pools (which get this process's
    sys.path) import it by that name. A generator for a fixture to yield from."""
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[name]
    sys.path.remove(str(BENCHMARKS))
