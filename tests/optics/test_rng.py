"""Philox-2x32-10 and the Gaussian draws of the compiled camera chain."""
import pytest
import torch

from lightning_convshare.optics.camera import _four_pass_noise
from lightning_convshare.optics.rng import philox2x32, philox_normal_pair

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
