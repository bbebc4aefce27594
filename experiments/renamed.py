"""Config names that moved, so that an old command line fails with one line naming the new one.

Whole conditions of a study (a method with whatever else it changes: model, algo, learning rate, a compose) are
the options of one group, ``condition`` (conf/condition/); ``intervention`` holds methods only. Before, the same
idea had three names: the ``+credit_method`` and ``+mechanism`` groups and the quadrant/attention presets among
the methods of ``intervention``.
"""

from __future__ import annotations

from collections.abc import Iterable

QUADRANT_MASKS = tuple(
    f"{kind}_{p}_{e}" for kind in ("only", "freeze") for p in ("pos", "neg") for e in ("high", "low")
)
"""The Four Quadrant masks, now ``condition=quadrant/<mask>`` (were ``intervention=<mask>``)."""
MOVED_INTERVENTIONS = {
    **{mask: f"quadrant/{mask}" for mask in QUADRANT_MASKS},
    "attention_anchors_only": "attention_anchors_only",
    "attention_explorers_only": "attention_explorers_only",
}
"""Old ``intervention`` presets -> their ``condition`` option."""


def _mechanism(value: str) -> str:
    return value if value in ("baseline", "sgd") else f"quadrant/{value}"


RENAMED_GROUPS = {"credit_method": lambda v: v, "mechanism": _mechanism}
"""Old groups (each option a whole condition) -> the name of each option in ``condition``."""


def renamed(overrides: Iterable[str]) -> str | None:
    """One line for the first override that names a moved config, with the override to write instead; None
    when every override is current."""
    for override in overrides:
        key, sep, value = override.partition("=")
        group = key.lstrip("+~")
        if not sep:
            continue
        values = [v.strip() for v in value.split(",")]
        if group in RENAMED_GROUPS:
            new = ",".join(RENAMED_GROUPS[group](v) for v in values)
            return (
                f"{override}: conf/{group}/ was renamed: every whole condition is an option of conf/condition/; "
                f"write condition={new}"
            )
        if group == "intervention" and any(v in MOVED_INTERVENTIONS for v in values):
            new = ",".join(MOVED_INTERVENTIONS.get(v, "baseline" if v == "none" else v) for v in values)
            return (
                f"{override}: the quadrant and attention presets moved from conf/intervention/ (methods only) to "
                f"conf/condition/; write condition={new}"
            )
    return None


def refuse_renamed(prog: str, overrides: Iterable[str]) -> None:
    """Exit 2 with ``<prog>: error: <one line>`` when an override names a moved config (:func:`renamed`)."""
    import sys

    message = renamed(overrides)
    if message is not None:
        print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(2)
