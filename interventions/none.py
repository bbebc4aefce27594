"""``intervention=none``: plain GRPO credit, every response token gets its sequence advantage, weight 1."""

from __future__ import annotations

from grpo.credit import Intervention, register


@register("none")
class NoIntervention(Intervention):
    pass
