"""How batching pads rows: the share of padding each batching mode leaves (`quickft data` and the CPU header show
it). Imports nothing of quickft's."""

from __future__ import annotations

import random

MEGABATCH = 50  # transformers' LengthGroupedSampler sorts megabatches of 50 micro-batches by length


def padding_share(lengths: list[int], batch: int, mode: str, seed: int) -> float:
    """Share of batch tokens that are padding when `lengths` are batched as `mode` would batch them."""
    if mode == "packed":
        return 0.0  # packing concatenates examples: no padding at all
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    if mode == "grouped":
        chunks = [order[i : i + MEGABATCH * batch] for i in range(0, len(order), MEGABATCH * batch)]
        order = [i for chunk in chunks for i in sorted(chunk, key=lambda i: -lengths[i])]
    real = padded = 0
    for i in range(0, len(order), batch):
        chunk = [lengths[j] for j in order[i : i + batch]]
        real += sum(chunk)
        padded += max(chunk) * len(chunk)
    return 1 - real / padded if padded else 0.0
