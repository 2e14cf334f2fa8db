"""The operator's controls of a simulator model: pinned values (``hold`` / ``release``)
and a forced overload.

Every model (:mod:`simulators.crane`, :mod:`simulators.rig`, :mod:`simulators.generic`)
lets a test or the control API (``POST /hold``, ``POST /release``) pin tags to exact
values. The API is the same for all of them, so it lives here once: a model mixes in
:class:`Pins`, says in ``validate`` what a good value for each tag is, and applies
``self._held`` in its ``values()`` (where the pinned values go, and which derived tags
follow them, is the model's physics).
"""

from __future__ import annotations

from collections.abc import Mapping

Value = float | bool | str


class Pins:
    """Tags pinned to exact values until released: ``hold``, ``release``, ``held``."""

    def __init__(self) -> None:
        self._held: dict[str, Value] = {}

    def validate(self, values: Mapping[str, object]) -> dict[str, Value]:
        """Values checked for their tags; ValueError says what is wrong (the model's)."""
        raise NotImplementedError

    def hold(self, values: Mapping[str, object]) -> None:
        """Pin tags to exact values (added to those already pinned) until release().

        All or nothing: every value is validated before any is pinned.
        """
        self._held.update(self.validate(values))

    def release(self) -> None:
        """Unpin every tag."""
        self._held.clear()

    @property
    def held(self) -> dict[str, Value]:
        """A copy of the pinned tags and their values."""
        return dict(self._held)


class ForcedOverload:
    """A model whose load can be forced past its limit until released: the crane's hook
    load to 115 % of its safe working load, the rig's to an overpull of 110 % of its rated
    hook load (``POST /overload``, ``derrick-sim --overload``). The model reads
    ``self._forced`` in its ``values()``."""

    _forced = False

    def overload(self, active: bool) -> None:
        """Force the overload (``active``) or release it."""
        self._forced = active

    @property
    def overload_forced(self) -> bool:
        return self._forced
