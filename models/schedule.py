"""Learning-rate schedule shared by the tokenizer and the LM loops."""

from __future__ import annotations

import math
from collections.abc import Callable


def warmup_cosine(
    warmup_steps: int, total_steps: int, min_lr_ratio: float
) -> Callable[[int], float]:
    """LambdaLR factor: linear warm-up to 1, then cosine decay to ``min_lr_ratio`` at the end."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
