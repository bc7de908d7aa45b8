"""The rollout arithmetic of a Deployment, as a pure function of counts.

`resolve_bounds` turns the two settings of a rolling update into replica counts, the
way Kubernetes does (`ResolveFenceposts` in `pkg/controller/deployment/util`): a
setting is a count (`2`) or a percentage of the desired replicas (`"25%"`); max surge
rounds **up**, max unavailable rounds **down**; both set to zero is refused (no
replica could ever be replaced), and if both only *round* to zero, max unavailable
becomes 1.

`rollout_step` then says, from how many old and new replicas are placed and Running,
how many new replicas to place and how many to stop. It is what the scheduler does on
every pass (decide.py), so a rollout advances one step per pass, level-triggered:

- **place new**: up to `replicas - new`, but never more than `replicas + max_surge`
  placed in all (old and new, before this pass's stops);
- **stop old that are not Running** (crashed, pending): all of them, at once (they
  serve nobody);
- **stop old that are Running but not ready** (readiness probe not passing yet, an
  agent restart): only within the budget of Kubernetes' cleanupUnhealthyReplicas,
  `old Running + new ready - (replicas - max_unavailable)`, so a rollout to a template
  that never gets ready stops at most `max_unavailable` of them;
- **stop old that are ready**: what is left of that budget, and only as many as keep
  at least `replicas - max_unavailable` ready (old and new counted alike);
- **stop new beyond `replicas`**: a scale-down during or after the rollout.

Worked example, today's settings (25 % and 25 %) and `replicas = 10`:
max surge = ceil(2.5) = 3, max unavailable = floor(2.5) = 2, so at most 13 placed and
at least 8 Running.

1. 10 old, all Running; 0 new. Place min(10 - 0, 13 - 10) = 3 new.
   Stop old: 10 Running - 8 = 2. (13 placed briefly, 8 Running at worst.)
2. 8 old Running, 3 new placed, none Running yet. Place min(10 - 3, 13 - 11) = 2.
   Running: 8 - 8 = 0 old to stop: the rollout waits for the new ones.
3. The 5 new are Running: 13 Running, 8 needed, so 5 old can stop; place
   min(10 - 5, 13 - 13) = 0 this pass, 5 on the next, when the old ones are gone.
4. ... until 0 old are left; a new template that never runs leaves 8 old serving.

With `replicas = 1`: surge ceil(0.25) = 1, unavailable floor(0.25) = 0, so a second
replica is placed and the old one stops only once the new one is Running.

A template using a ReadWriteOncePod claim (`exclusive`) rolls with surge 0 and
unavailable 1 instead: with `replicas = 1` the old replica stops first, and the new
one is placed on a later pass (once no placement uses the claim).

The Deployment's settings (`spec.strategy`, `spec.minReadySeconds`, `spec.paused`):

- **Recreate** (`recreate=True`): while any old replica is placed, every old one stops
  and nothing new is placed; new ones are placed once none is left.
- **minReadySeconds**: the caller counts a new replica as ready (available) only once it
  has been Running that long (decide.py), so old ones wait for it.
- **paused** (`paused=True`): while old replicas are placed the template change is not
  rolled out: nothing of the new template is placed and no old replica stops for the
  rollout; a scale-up places old-template replicas (`place_old`), a scale-down stops
  the excess among all (`stop_any`), as Kubernetes scales a paused Deployment.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

# Kubernetes' defaults, a Deployment's when it sets none (corral.contract.specs.RollingUpdate).
DEFAULT_MAX_SURGE: int | str = "25%"
DEFAULT_MAX_UNAVAILABLE: int | str = "25%"

_PERCENT = re.compile(r"^(0|[1-9][0-9]{0,2})%$")


@dataclass(frozen=True)
class Bounds:
    """A rolling update's settings resolved to replica counts for one `replicas`."""

    max_surge: int
    max_unavailable: int


@dataclass(frozen=True)
class Step:
    """What one pass does to a rolling Deployment."""

    place_new: int = 0
    stop_old_unready: int = 0
    stop_old_ready: int = 0
    stop_new: int = 0
    place_old: int = 0  # paused: replicas of the old template, for a scale-up
    stop_any: int = 0  # paused: the excess of a scale-down, old and new alike

    @property
    def stop_old(self) -> int:
        return self.stop_old_unready + self.stop_old_ready


def _scaled(field: str, value: int | str, replicas: int, *, round_up: bool) -> int:
    """A count as is, or a percentage of `replicas` rounded up (surge) or down."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{field}: a count or a percentage like '25%', not {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{field}: must not be negative, got {value}")
        return value
    match = _PERCENT.match(value)
    if match is None:
        raise ValueError(f"{field}: a count or a percentage like '25%', not {value!r}")
    percent = int(match.group(1))
    if percent > 100 and not round_up:  # a surge may exceed 100 %, as in Kubernetes
        raise ValueError(f"{field}: at most 100%, got {value!r}")
    scaled = percent * replicas
    return -(-scaled // 100) if round_up else scaled // 100


def _is_zero(value: int | str) -> bool:
    return value == 0 or (isinstance(value, str) and value.rstrip("%") == "0")


@functools.lru_cache(maxsize=1024, typed=True)  # pure; called per Deployment per pass
def resolve_bounds(
    replicas: int,
    max_surge: int | str = DEFAULT_MAX_SURGE,
    max_unavailable: int | str = DEFAULT_MAX_UNAVAILABLE,
    *,
    exclusive: bool = False,
) -> Bounds:
    """The settings as counts for `replicas`: surge rounds up, unavailable rounds down.

    `exclusive`: the template uses a ReadWriteOncePod claim, which one replica at a time
    may use: maxSurge 0 and maxUnavailable 1 whatever the settings (the old replica stops
    before the new one is placed; docs/volumes.md, "Replicas with volumes").

    Raises ValueError naming the setting when one is malformed, or when both are zero.
    """
    if exclusive:
        max_surge, max_unavailable = 0, 1
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
        raise ValueError(f"replicas: a count of at least 0, not {replicas!r}")
    surge = _scaled("maxSurge", max_surge, replicas, round_up=True)
    unavailable = _scaled("maxUnavailable", max_unavailable, replicas, round_up=False)
    if _is_zero(max_surge) and _is_zero(max_unavailable):
        raise ValueError("maxUnavailable: must not be zero when maxSurge is zero")
    if surge == 0 and unavailable == 0:
        unavailable = 1  # rounded down to nothing: let one go at a time (as Kubernetes)
    return Bounds(max_surge=surge, max_unavailable=unavailable)


def rollout_step(
    replicas: int,
    bounds: Bounds,
    *,
    old: int,
    old_ready: int,
    new: int,
    new_ready: int,
    recreate: bool = False,
    paused: bool = False,
    old_running_unready: int = 0,
) -> Step:
    """How many new replicas to place and how many to stop, from the counts placed and
    Running (ready) of the old templates and of the current one. See the module's
    worked example. Without old replicas this is plain scaling: place `replicas - new`
    or stop the excess (whatever `recreate` and `paused` say).

    `old_running_unready`: how many of the `old - old_ready` unready old replicas are
    Running (their readiness probe not passing yet): those stop only within the
    maxUnavailable budget, as Kubernetes' cleanupUnhealthyReplicas; the others (crashed,
    pending) stop at once."""
    if not 0 <= old_ready <= old:
        raise ValueError(f"old_ready: between 0 and old ({old}), got {old_ready}")
    if not 0 <= new_ready <= new:
        raise ValueError(f"new_ready: between 0 and new ({new}), got {new_ready}")
    if not 0 <= old_running_unready <= old - old_ready:
        raise ValueError(
            f"old_running_unready: between 0 and old - old_ready ({old - old_ready}),"
            f" got {old_running_unready}"
        )
    if replicas < 0:
        raise ValueError(f"replicas: a count of at least 0, not {replicas}")
    if old and paused:
        return Step(place_old=max(0, replicas - old - new), stop_any=max(0, old + new - replicas))
    if old and recreate:
        return Step(
            stop_old_unready=old - old_ready,
            stop_old_ready=old_ready,
            stop_new=max(0, new - replicas),
        )
    place_new = max(0, min(replicas - new, replicas + bounds.max_surge - old - new))
    min_available = replicas - bounds.max_unavailable
    not_running = old - old_ready - old_running_unready  # serve nobody: all stop
    # Kubernetes' maxScaledDown: the Running old replicas and the ready new ones beyond
    # the minimum available; Running-unready old ones spend it first, then ready ones.
    budget = max(0, old_ready + old_running_unready + new_ready - min_available)
    stop_running_unready = min(old_running_unready, budget)
    stoppable = max(0, new_ready + old_ready - min_available)
    return Step(
        place_new=place_new,
        stop_old_unready=not_running + stop_running_unready,
        stop_old_ready=min(old_ready, stoppable, budget - stop_running_unready),
        stop_new=max(0, new - replicas),
    )
