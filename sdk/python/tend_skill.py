"""tend_skill: write a Tend skill in Python.

A skill is a class with ``run(self, input: dict) -> dict`` (and, for a repair skill,
``plan(self, input: dict) -> dict``). Raise :class:`SkillFailure` to return a
``skill-error``; any other exception becomes a ``skill-error`` with code ``internal``.
Export it with one line at the bottom of ``app.py``::

    WitWorld = tend_skill.diagnose(MySkill)   # or tend_skill.repair(MySkill)

Build with ``tend skill build <dir>`` (componentize-py against ``wit/skill``).
"""

import json
import traceback

from componentize_py_types import Err
from wit_world.imports import host, log  # noqa: F401  (re-exported for skills)
from wit_world.imports.types import SkillError

try:  # only in the repair world
    from wit_world.imports import exec  # noqa: F401
except ImportError:  # pragma: no cover - diagnose world
    exec = None


class SkillFailure(Exception):
    """Raise to return a skill-error with a code and a message."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class Skill:
    """Base class; override ``run`` (and ``plan`` for repair skills)."""

    def run(self, input: dict) -> dict:
        raise SkillFailure("not-implemented", "this skill does not implement run")

    def plan(self, input: dict) -> dict:
        raise SkillFailure("not-implemented", "this skill does not implement plan")


def debug(message: str) -> None:
    log.log(log.Level.DEBUG, message)


def info(message: str) -> None:
    log.log(log.Level.INFO, message)


def warn(message: str) -> None:
    log.log(log.Level.WARN, message)


def error(message: str) -> None:
    log.log(log.Level.ERROR, message)


def _call(method, text: str) -> str:
    try:
        data = json.loads(text)
    except ValueError as e:
        raise Err(SkillError("invalid-input", f"input is not JSON: {e}"))
    try:
        out = method(data)
    except SkillFailure as f:
        raise Err(SkillError(f.code, f.message))
    except Err as e:  # a host call failed (e.g. exec `denied`): keep the host's code
        if isinstance(e.value, SkillError):
            raise Err(e.value)
        raise Err(SkillError("internal", f"host call failed: {e.value!r}"))
    except Exception as e:  # a bug in the skill: report it as data, with the last frame
        frame = traceback.extract_tb(e.__traceback__)[-1]
        raise Err(SkillError("internal", f"{type(e).__name__}: {e} ({frame.filename}:{frame.lineno})"))
    return json.dumps(out)


def diagnose(cls):
    """The WitWorld class for a diagnose skill."""
    skill = cls()

    class WitWorld:
        def run(self, input: str) -> str:
            return _call(skill.run, input)

    return WitWorld


def repair(cls):
    """The WitWorld class for a repair skill."""
    skill = cls()

    class WitWorld:
        def run(self, input: str) -> str:
            return _call(skill.run, input)

        def plan(self, input: str) -> str:
            return _call(skill.plan, input)

    return WitWorld
