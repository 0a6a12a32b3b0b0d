"""The names of the search's controllers, the one list of them, in a module that imports nothing.

:mod:`nas.controllers` builds the samplers these names stand for and re-exports :data:`CONTROLLERS`; it imports
Optuna (and, through the evolution controller's replay, SQLAlchemy), about half a second. The ``nas`` command's
parser offers the names as ``--controller`` choices and ``--filter controller=`` values, and :mod:`nas.trials`
validates filters with them, so they live here: building the parser imports no Optuna (DESIGN.md: the CLI parses
flags and calls one library function; ``nas --help`` should not pay for a study it never opens).
"""

from __future__ import annotations

CONTROLLERS = ("evolution", "random", "rl", "tpe")
