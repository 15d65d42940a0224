"""The cards' peak 16-bit rates behind MFU, recomputed from each card's SMs, clock and tensor-core rate."""

from __future__ import annotations

import re

import pytest

from quickft.metrics import PEAK_FLOPS, peak_flops

# Each card's SMs and boost clock (MHz, the one its data sheet's peak is computed at), and its architecture's dense
# 16-bit tensor-core FLOPs per SM per clock with FP32 accumulation (the vendors' whitepapers): Volta and Turing 1024
# (8 tensor cores x 64 FMA), Ampere GA100 2048, Ampere GA10x and Ada 1024 on data-center cards but 512 on GeForce
# cards, the A10G and the L40 (FP32 accumulation at half the FP16-accumulate rate), Hopper 4096.
CARDS = {
    "Tesla V100-SXM2-16GB": (80, 1530, 1024),
    "Tesla V100-PCIE-32GB": (80, 1380, 1024),
    "Tesla T4": (40, 1590, 1024),
    "NVIDIA A100-SXM4-80GB": (108, 1410, 2048),
    "NVIDIA A100 80GB PCIe": (108, 1410, 2048),
    "NVIDIA A10": (72, 1695, 1024),
    "NVIDIA A10G": (80, 1710, 512),
    "NVIDIA GeForce RTX 3060": (28, 1777, 512),
    "NVIDIA GeForce RTX 3090": (82, 1695, 512),
    "NVIDIA GeForce RTX 4090": (128, 2520, 512),
    "NVIDIA L4": (58, 2040, 1024),
    "NVIDIA L40": (142, 2490, 512),
    "NVIDIA L40S": (142, 2520, 1024),
    "NVIDIA H100 80GB HBM3": (132, 1830, 4096),
    "NVIDIA H100 PCIe": (114, 1620, 4096),
    "NVIDIA H200": (132, 1830, 4096),
}
# The NVL cards' clocks for their peak are not published: their data sheets' 1,671 TFLOPS with sparsity, halved.
DATA_SHEET_ONLY = {"NVIDIA H100 NVL": 1671e12 / 2, "NVIDIA H200 NVL": 1671e12 / 2}


@pytest.mark.parametrize("name", list(CARDS))
def test_each_cards_peak_is_its_sms_times_clock_times_the_fp32_accumulate_rate(name):
    sms, mhz, per_sm = CARDS[name]
    assert peak_flops(name) == pytest.approx(sms * mhz * 1e6 * per_sm, rel=0.02)


def test_the_peak_table_is_all_checked():
    for name, peak in DATA_SHEET_ONLY.items():
        assert peak_flops(name) == pytest.approx(peak, rel=0.01), name
    names = [re.sub(r"^(NVIDIA |Tesla )?(GeForce )?", "", n) for n in (*CARDS, *DATA_SHEET_ONLY)]
    unchecked = [key for key in PEAK_FLOPS if not any(re.fullmatch(key, n) for n in names)]
    assert not unchecked, f"entries no test recomputes: {unchecked}"
