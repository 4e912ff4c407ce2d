"""The pick-and-place goals of a LIBERO task, read from its BDDL (`(:goal (And (In obj region) ...))`)."""

from __future__ import annotations

from dataclasses import dataclass

from clad.errors import CladError
from clad.libero.env import LiberoEnv

__all__ = ["PlaceGoal", "parse_goals"]


@dataclass(frozen=True)
class PlaceGoal:
    """Put `obj` into/on `target`. kind 'in': target is a region site; 'on': target is an object."""

    kind: str
    obj: str
    target: str
    predicate: str = ""  # the bddl predicate checked for completion (defaults to `kind`)


def parse_goals(env: LiberoEnv) -> list[PlaceGoal]:
    """Pick-and-place goals of the task's bddl. Raises CladError for predicates the expert cannot do."""
    inner = env.raw.env
    goals = []
    for pred in inner.parsed_problem["goal_state"]:
        name = pred[0].lower()
        if name == "in" and len(pred) == 3 and pred[2] in inner.object_sites_dict:
            goals.append(PlaceGoal("in", pred[1], pred[2]))
        elif name == "on" and len(pred) == 3 and pred[2] in inner.objects_dict:
            goals.append(PlaceGoal("on", pred[1], pred[2]))
        elif name == "on" and len(pred) == 3 and pred[2] in inner.object_sites_dict:
            goals.append(PlaceGoal("in", pred[1], pred[2], "on"))  # a region on a surface: drop at its centre
        else:
            raise CladError(f"the scripted expert cannot solve goal {pred} of task {env.task.name} "
                            "(only In/On pick-and-place goals are supported)")
    return goals
