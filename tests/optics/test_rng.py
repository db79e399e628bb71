"""Philox-2x32-10 and the Gaussian draws of the compiled camera chain."""
import math

import pytest
import torch

from lightning_convshare.optics.camera import _counters, _four_pass_noise
from lightning_convshare.optics.rng import MASK32, PHILOX_M, box_muller, mulhilo32, philox2x32, philox_normal_pair, to_words

# Random123's kat_vectors: "philox2x32 10 ctr0 ctr1 key -> out0 out1"
KAT = [
    ((0x00000000, 0x00000000, 0x00000000), (0xFF1DAE59, 0x6CD10DF2)),
    ((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0x2C3F628B, 0xAB4FD7AD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E), (0xDD7CE038, 0xF62A4C12)),
]


@pytest.mark.parametrize("inputs, expected", KAT)
def test_philox_reproduces_the_random123_known_answers(inputs, expected):
    c0, c1, key = (torch.tensor(v, dtype=torch.int64) for v in inputs)
    assert tuple(int(v) for v in philox2x32(c0, c1, key)) == expected


def test_philox_normals_are_standard_normal_and_independent():
    n = 1_000_000
    index = torch.arange(n)
    z, _ = philox_normal_pair(index, torch.tensor(123_456_789_012))
    assert z.dtype == torch.float32 and torch.isfinite(z).all()
    assert abs(float(z.mean())) < 4e-3 and abs(float(z.std()) - 1) < 4e-3
    assert abs(float((z.abs() < 1).float().mean()) - 0.6827) < 2e-3  # one-sigma mass
    assert abs(float((z.abs() > 3).float().mean()) - 0.0027) < 4e-4  # the tails are there
    other, _ = philox_normal_pair(index, torch.tensor(123_456_789_013))  # the next seed: an unrelated stream
    pairs = [(z, other), (z[:-1], z[1:])]  # across seeds, and neighbouring counters
    for u, v in pairs:
        assert abs(float(torch.corrcoef(torch.stack([u, v]))[0, 1])) < 4e-3
    assert torch.equal(z[:1000], philox_normal_pair(index[:1000], torch.tensor(123_456_789_012))[0])  # a pure function


def test_the_four_pass_draws_are_four_independent_standard_normals():
    eps = torch.stack(_four_pass_noise((500, 500), "cpu", torch.tensor(7))).flatten(1)  # 4, n
    torch.testing.assert_close(eps.mean(1), torch.zeros(4), rtol=0, atol=8e-3)
    torch.testing.assert_close(eps.std(1), torch.ones(4), rtol=0, atol=8e-3)
    corr = torch.corrcoef(eps) - torch.eye(4)
    assert corr.abs().max() < 8e-3  # cos and sin of one Box-Muller pair are uncorrelated, and so are the blocks
    r2 = eps[0] ** 2 + eps[1] ** 2  # ... and independent: their squared radius is chi-square(2), mean 2, var 4
    assert abs(float(r2.mean()) - 2) < 0.02 and abs(float(r2.var()) - 4) < 0.1


@pytest.mark.parametrize("inputs, expected", KAT)
def test_philox_on_32_bit_words_gives_the_known_answers_as_bit_patterns(inputs, expected):
    c0, c1 = (torch.tensor([to_words(v)], dtype=torch.int32) for v in inputs[:2])
    words = philox2x32(c0, c1, to_words(inputs[2]))
    assert all(w.dtype == torch.int32 for w in words)
    assert tuple(int(w) & MASK32 for w in words) == expected


def test_the_32_bit_product_equals_the_64_bit_one():
    edges = torch.tensor([0, 1, 0xFFFF, 0x10000, 2**31 - 1, 2**31, 2**32 - 1, PHILOX_M, 0xDEADBEEF])
    a = torch.cat([edges, torch.randint(0, 2**32, (100_000,), generator=torch.Generator().manual_seed(0))])
    for m in (PHILOX_M, 0xFFFFFFFF, 0x10001, 1, 0):
        hi, lo = mulhilo32(to_words(a), m)
        assert torch.equal(hi.to(torch.int64) & MASK32, (a * m) >> 32 & MASK32)
        assert torch.equal(lo.to(torch.int64) & MASK32, (a * m) & MASK32)


def test_int32_and_int64_counters_give_the_same_draws_eager_and_compiled():
    seed = torch.tensor(987_654_321_987)
    wide = torch.arange(4096).view(64, 64)
    expected = philox_normal_pair(wide, seed)
    narrow = wide.to(torch.int32)
    for got in (philox_normal_pair(narrow, seed), torch.compile(philox_normal_pair, dynamic=False)(narrow, seed)):
        for e, g in zip(expected, got, strict=True):
            torch.testing.assert_close(g, e, rtol=2e-7, atol=2e-7)  # compiled log/cos may differ in the last bit


def test_the_uniforms_use_all_32_bits_so_the_tails_reach_past_six_sigma():
    # first word 0: u1 = 2**-33, r = sqrt(66 ln 2) = 6.76 (theta 0: all of it in the cosine); the lowest bits
    # still move r, and the largest word gives u1 = 1: r = 0, no log(0) anywhere
    words = torch.tensor([0, 1, 2, 255, 256, -1], dtype=torch.int32)
    z0, z1 = box_muller(words, torch.zeros_like(words))
    assert float(z0[0]) == pytest.approx((66 * math.log(2)) ** 0.5, rel=1e-6)
    assert bool((z0[1:5] < z0[:4]).all()) and float(z0[-1]) == 0.0 and bool((z1 == 0).all())
    quarter = torch.full_like(words[:1], 1 << 30)  # theta = pi / 2: all of it in the sine
    z0, z1 = box_muller(words[:1], quarter)
    assert abs(float(z0[0])) < 1e-5 and float(z1[0]) == pytest.approx((66 * math.log(2)) ** 0.5, rel=1e-6)


def test_the_camera_counters_are_32_bit_words_unless_they_would_overflow():
    assert _counters((4, 8), "cpu", 2).dtype == torch.int32
    assert torch.equal(_counters((4, 8), "cpu"), torch.arange(32, dtype=torch.int32).view(4, 8))
    assert _counters((2**15, 2**15), "meta", 2).dtype == torch.int64  # 2**31 counters: int64, taken modulo 2**32
