"""The maths of the attention metrics: exact cases, hand-computed values, naive references, token handling."""
import doctest
import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.stats import spearmanr

from lightning_convshare.errors import ConfigError, GeometryError
from lightning_convshare.metrics import (
    AttentionSimilarity,
    AttentionStatistics,
    TokenLayout,
    attention_cka,
    attention_cosine_similarity,
    attention_entropy,
    attention_js_divergence,
    attention_similarity,
    attention_statistics,
    functional,
    mean_attention_distance,
    per_layer,
    spearman_corrcoef,
    tokens,
)
from lightning_convshare.metrics import attention_metrics as attention_module


def random_maps(b, layers, heads, n, seed=0, sharp=3.0):
    g = torch.Generator().manual_seed(seed)
    return (sharp * torch.randn(b, layers, heads, n, n, generator=g)).softmax(-1)  # B, L, H, N, N


LAYOUT = TokenLayout(grid=(3, 4), patch_size=(4, 2), num_prefix=3, has_cls=True)  # cls + 2 registers + 12 patches


def test_docstring_examples_hold():
    for module in (functional, per_layer, attention_module, tokens):
        assert doctest.testmod(module, extraglobs={"torch": torch}).failed == 0, module.__name__


def test_identical_attention_gives_cosine_1_js_0_cka_1_spearman_1():
    maps = random_maps(5, 2, 3, LAYOUT.num_tokens)
    out = attention_similarity(maps, maps.clone(), LAYOUT)
    for key in ("cosine", "cka", "cls_spearman"):
        torch.testing.assert_close(out[f"{key}/head"], torch.ones(2, 3), msg=key)
        torch.testing.assert_close(out[key], torch.tensor(1.0))
    torch.testing.assert_close(out["js/head"], torch.zeros(2, 3), atol=1e-6, rtol=0)
    metric = AttentionSimilarity(2, 3, LAYOUT)
    metric.update(maps, maps)
    assert metric.compute()["cosine"].item() == pytest.approx(1.0, abs=1e-6)
    assert metric.compute()["js"].item() == pytest.approx(0.0, abs=1e-6)


def test_hand_built_maps_give_the_hand_computed_values():
    a = torch.tensor([[[1.0, 0.0], [0.5, 0.5]]])  # B=1, Q=2, K=2
    r = torch.tensor([[[0.5, 0.5], [0.5, 0.5]]])
    # cosine: <(1,0,.5,.5), (.5,.5,.5,.5)> / (sqrt(1.5) * 1)
    assert attention_cosine_similarity(a, r).item() == pytest.approx(1 / math.sqrt(1.5), abs=1e-6)
    # JS, row 1: p=(1,0), r=(.5,.5), m=(.75,.25); row 2: identical
    kl_pm = math.log2(1 / 0.75)
    kl_rm = 0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)
    assert attention_js_divergence(a, r).item() == pytest.approx((0.5 * kl_pm + 0.5 * kl_rm) / 2, abs=1e-6)
    # CKA of the identity against a map merging queries 0 and 1 (worked in the docstring): 1/sqrt(2)
    eye = torch.eye(3)[None]
    merged = torch.tensor([[[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]])
    assert attention_cka(eye, merged).item() == pytest.approx(1 / math.sqrt(2), abs=1e-6)
    # Spearman with a tie: ranks (1,2,3) vs (1.5,1.5,3) -> 1.5 / sqrt(2 * 1.5)
    rho = spearman_corrcoef(torch.tensor([[0.1, 0.2, 0.7]]), torch.tensor([[0.3, 0.3, 0.4]]))
    assert rho.item() == pytest.approx(math.sqrt(3) / 2, abs=1e-6)
    # entropy of (.5, .25, .25) = 1.5 bits
    assert attention_entropy(torch.tensor([[[0.5, 0.25, 0.25]]])).item() == pytest.approx(1.5 * math.log(2), abs=1e-6)


def _grid_points(grid, patch):
    return [(i * patch[0], j * patch[1]) for i in range(grid[0]) for j in range(grid[1])]


def test_mean_distance_is_zero_for_self_attention_and_the_grid_mean_for_uniform_attention():
    n, p = LAYOUT.num_tokens, LAYOUT.num_patches
    self_only = torch.eye(n).expand(2, 1, 1, n, n)
    out = attention_statistics(self_only, LAYOUT)
    assert out["distance"].item() == 0.0
    assert out["to_self"].item() == 1.0 and out["to_cls"].item() == 0.0
    uniform = torch.full((2, 1, 1, n, n), 1.0 / n)  # also attends to cls and registers: renormalised away
    pts = _grid_points(LAYOUT.grid, LAYOUT.patch_size)
    analytic = sum(math.dist(a, b) for a in pts for b in pts) / p**2
    assert attention_statistics(uniform, LAYOUT)["distance"].item() == pytest.approx(analytic, rel=1e-6)
    # a 1 x g row of patches has the closed form (g^2 - 1) / (3 g) patch widths
    g, width = 7, 16
    row = torch.full((1, g, g), 1.0 / g)
    assert mean_attention_distance(row, (1, g), (16, width)).item() == pytest.approx((g * g - 1) / (3 * g) * width, rel=1e-6)


# distance, to_self and to_cls read the patch queries' rows in place; a wide grid with registers too
WIDE = TokenLayout(grid=(6, 6), patch_size=(2, 3), num_prefix=2, has_cls=True)


@pytest.mark.parametrize("layout", [LAYOUT, WIDE], ids=["12-patches", "36-patches"])
def test_intrinsic_statistics_match_a_naive_loop(layout):
    maps = random_maps(3, 2, 2, layout.num_tokens, seed=1)
    out = attention_statistics(maps, layout)
    pts = _grid_points(layout.grid, layout.patch_size)
    patches = range(layout.num_prefix, layout.num_tokens)
    kept_rows = [0, *patches]  # class token and patches; registers are not queries of the entropy
    for layer in range(2):
        for head in range(2):
            dist, ent, own, cls = [], [], [], []
            for img in maps[:, layer, head].double().numpy():
                block = img[np.ix_(list(patches), list(patches))]
                block = block / block.sum(1, keepdims=True)
                dist.append(np.mean([sum(block[q, k] * math.dist(pts[q], pts[k]) for k in range(len(pts))) for q in range(len(pts))]))
                ent.append(np.mean([-(img[q] * np.log(img[q])).sum() for q in kept_rows]))
                own.append(np.mean([img[q, q] for q in patches]))
                cls.append(np.mean([img[q, 0] for q in patches]))
            for key, ref in (("distance", dist), ("entropy", ent), ("to_self", own), ("to_cls", cls)):
                assert out[f"{key}/head"][layer, head].item() == pytest.approx(np.mean(ref), rel=1e-5), key
    torch.testing.assert_close(out["distance/layer"], out["distance/head"].mean(1))


def test_similarity_matches_scipy_and_a_naive_loop():
    layout = TokenLayout(grid=(2, 3), num_prefix=1, has_cls=True)
    a, r = random_maps(4, 1, 2, 7, seed=2), random_maps(4, 1, 2, 7, seed=3)
    out = attention_similarity(a, r, layout)
    for head in range(2):
        cos, js, cka, rho = [], [], [], []
        for x, y in zip(a[:, 0, head].double().numpy(), r[:, 0, head].double().numpy(), strict=True):
            cos.append((x * y).sum() / np.linalg.norm(x) / np.linalg.norm(y))
            js.append(np.mean([jensenshannon(x[q], y[q], base=2) ** 2 for q in range(7)]))
            xc, yc = x - x.mean(0), y - y.mean(0)  # feature-space CKA: queries are the examples
            cka.append(np.linalg.norm(yc.T @ xc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc)))
            rho.append(spearmanr(x[0, 1:], y[0, 1:]).statistic)
        for key, ref in (("cosine", cos), ("js", js), ("cka", cka), ("cls_spearman", rho)):
            assert out[f"{key}/head"][0, head].item() == pytest.approx(np.mean(ref), rel=1e-5, abs=1e-6), key


def test_spearman_uses_average_ranks_for_ties_like_scipy():
    x = torch.tensor([[0.1, 0.4, 0.4, 0.1, 0.0, 0.3]])
    y = torch.tensor([[0.2, 0.2, 0.5, 0.1, 0.0, 0.2]])
    assert spearman_corrcoef(x, y).item() == pytest.approx(spearmanr(x[0], y[0]).statistic, rel=1e-6)


def test_layer_values_compare_head_averaged_maps_and_ignore_head_order():
    a, r = random_maps(3, 2, 4, LAYOUT.num_tokens, seed=4), random_maps(3, 2, 4, LAYOUT.num_tokens, seed=5)
    out = attention_similarity(a, r, LAYOUT)
    shuffled = attention_similarity(a, r[:, :, [2, 0, 3, 1]], LAYOUT)
    for key in ("cosine", "js", "cka", "cls_spearman"):
        torch.testing.assert_close(shuffled[f"{key}/layer"], out[f"{key}/layer"], msg=key)
        assert not torch.allclose(shuffled[f"{key}/head"], out[f"{key}/head"]), key
        torch.testing.assert_close(out[key], out[f"{key}/layer"].mean())
    plain = TokenLayout(grid=(3, 4), num_prefix=1, has_cls=True)  # no registers: nothing is renormalised
    a, r = a[..., 2:, 2:].softmax(-1), r[..., 2:, 2:].softmax(-1)
    layer = attention_similarity(a, r, plain)["cosine/layer"]
    torch.testing.assert_close(layer, attention_similarity(a.mean(2, keepdim=True), r.mean(2, keepdim=True), plain)["cosine/head"][:, 0])


def test_registers_are_dropped_and_rows_renormalised_and_a_missing_class_token_is_left_out():
    plain = TokenLayout(grid=(3, 4), patch_size=(4, 2), num_prefix=1, has_cls=True)  # no registers
    a, r = random_maps(3, 1, 2, LAYOUT.num_tokens, seed=6), random_maps(3, 1, 2, plain.num_tokens, seed=7)
    kept = [0, *range(3, LAYOUT.num_tokens)]
    a_kept = a[..., kept, :][..., kept]
    a_kept = a_kept / a_kept.sum(-1, keepdim=True)
    out = attention_similarity(a, r, LAYOUT, plain)
    torch.testing.assert_close(out["cosine/head"], attention_similarity(a_kept, r, plain)["cosine/head"])
    torch.testing.assert_close(out["js/head"], attention_similarity(a_kept, r, plain)["js/head"])
    # a reference without class token: only patch rows and columns are compared, and no cls_spearman
    no_cls = TokenLayout(grid=(3, 4), patch_size=(4, 2))
    patches = r[..., 1:, 1:] / r[..., 1:, 1:].sum(-1, keepdim=True)
    out = attention_similarity(r, patches, plain, no_cls)
    assert "cls_spearman" not in out
    torch.testing.assert_close(out["cosine/head"], torch.ones(1, 2))


def test_cka_of_maps_without_query_variance_is_left_out():
    n = 4
    flat = torch.full((1, 1, 1, n, n), 1.0 / n)  # every query attends alike: CKA undefined
    varied = random_maps(1, 1, 1, n, seed=8)
    both = torch.cat([flat, varied])
    metric = AttentionSimilarity(1, 1, TokenLayout(grid=(2, 2)))
    metric.update(both, varied.expand(2, -1, -1, -1, -1))
    assert metric.counts[metric.names.index("cka"), 0, 0].item() == 1  # only the varied image counts
    assert metric.counts[metric.names.index("cosine"), 0, 0].item() == 2  # cosine is defined on both
    assert metric.compute()["cka"].item() == pytest.approx(1.0, abs=1e-6)
    alone = AttentionSimilarity(1, 1, TokenLayout(grid=(2, 2)))
    alone.update(flat, flat)
    assert math.isnan(alone.compute()["cka"].item()) and alone.compute()["cosine"].item() == pytest.approx(1.0)


def test_cka_of_identical_maps_with_little_query_variance_is_one():
    """Variance above the CKA threshold but Gram norms far below 1e-12: the normalisation must not clamp them."""
    uniform = torch.full((2, 1, 2, 5, 5), 0.2)
    maps = uniform + 1e-5 * torch.randn(2, 1, 2, 5, 5)
    maps = maps / maps.sum(-1, keepdim=True)
    layout = TokenLayout(grid=(2, 2), num_prefix=1, has_cls=True)
    torch.testing.assert_close(attention_similarity(maps, maps, layout)["cka/head"], torch.ones(1, 2))
    torch.testing.assert_close(attention_cka(maps, maps), torch.ones(1, 2))
    metric = AttentionSimilarity(1, 2, layout, per_head=False)
    metric.update(maps, maps.clone())
    assert metric.compute()["cka"].item() == pytest.approx(1.0)


def test_several_updates_equal_one_update_on_the_concatenation():
    a, r = random_maps(11, 2, 3, LAYOUT.num_tokens, seed=9), random_maps(11, 2, 3, LAYOUT.num_tokens, seed=10)
    one, many = AttentionSimilarity(2, 3, LAYOUT), AttentionSimilarity(2, 3, LAYOUT)
    stats_one, stats_many = AttentionStatistics(2, 3, LAYOUT), AttentionStatistics(2, 3, LAYOUT)
    one.update(a, r)
    stats_one.update(a)
    for lo, hi in ((0, 4), (4, 5), (5, 11)):
        many.update(a[lo:hi], r[lo:hi])
        stats_many.update({f"blocks.{i}.attn": a[lo:hi, i] for i in range(2)})  # the recorder's dict form
    for x, y in ((one.compute(), many.compute()), (stats_one.compute(), stats_many.compute())):
        assert x.keys() == y.keys()
        for key in x:
            torch.testing.assert_close(x[key], y[key], msg=key)
    # the class equals the functional form
    torch.testing.assert_close(one.compute()["cka/head"], attention_similarity(a, r, LAYOUT)["cka/head"])


@pytest.mark.parametrize("numel", [1, 300, 5000])
def test_cache_sized_chunks_of_images_and_layers_give_the_same_values(monkeypatch, numel):
    a, r = random_maps(7, 3, 2, LAYOUT.num_tokens, seed=12), random_maps(7, 3, 2, LAYOUT.num_tokens, seed=13)
    whole = AttentionSimilarity(3, 2, LAYOUT), AttentionStatistics(3, 2, LAYOUT)
    whole[0].update(a, r)
    whole[1].update(a)
    monkeypatch.setattr(attention_module, "CHUNK_NUMEL", numel)  # 1: one image and layer at a time
    assert len(list(attention_module._chunks(a))) > 1
    chunked = AttentionSimilarity(3, 2, LAYOUT), AttentionStatistics(3, 2, LAYOUT)
    chunked[0].update(a, r)
    chunked[1].update(a)
    for x, y in zip(whole, chunked, strict=True):
        for key, value in x.compute().items():
            torch.testing.assert_close(y.compute()[key], value, msg=key)


def test_heads_that_differ_give_layer_values_only():
    a, r = random_maps(2, 2, 4, LAYOUT.num_tokens), random_maps(2, 2, 2, LAYOUT.num_tokens)
    metric = AttentionSimilarity(2, 4, LAYOUT, target_num_heads=2)
    metric.update(a, r)
    out = metric.compute()
    assert "cosine/head" not in out and out["cosine/layer"].shape == (2,)
    layers_only = AttentionSimilarity(2, 4, LAYOUT, per_head=False)  # asked for: the same layer values, cheaper
    full = AttentionSimilarity(2, 4, LAYOUT)
    r4 = random_maps(2, 2, 4, LAYOUT.num_tokens, seed=14)
    layers_only.update(a, r4)
    full.update(a, r4)
    assert layers_only.sums.shape == (4, 2, 1) and "js/head" not in layers_only.compute()
    torch.testing.assert_close(layers_only.compute()["js/layer"], full.compute()["js/layer"])


def test_bad_shapes_and_layouts_say_what_is_expected():
    metric = AttentionStatistics(2, 3, LAYOUT)
    with pytest.raises(GeometryError, match=r"expects \(\.\.\., 15, 15\).*2 prefix|expects \(\.\.\., 15, 15\)"):
        metric.update(random_maps(1, 2, 3, 14))
    with pytest.raises(GeometryError, match="expected \\(B, 2 layers, 3 heads"):
        metric.update(random_maps(1, 1, 3, 15))
    with pytest.raises(GeometryError, match="different patch grids"):
        AttentionSimilarity(2, 3, LAYOUT, TokenLayout(grid=(4, 4), num_prefix=1, has_cls=True))
    sim = AttentionSimilarity(2, 3, LAYOUT)
    with pytest.raises(GeometryError, match="2 images and reference maps 3"):
        sim.update(random_maps(2, 2, 3, 15), random_maps(3, 2, 3, 15))


def test_layouts_and_metrics_from_timm_models():
    from lightning_convshare.layers import AttentionRecorder
    from lightning_convshare.surgery import apply_surgery
    from tests.conftest import tiny_vit

    model, reference = tiny_vit(reg_tokens=2), tiny_vit(class_token=False, global_pool="avg")
    for m in (model, reference):
        apply_surgery(m, "vit")
    assert TokenLayout.from_model(model) == TokenLayout(grid=(4, 4), patch_size=(4, 4), num_prefix=3, has_cls=True)
    assert TokenLayout.from_model(reference).has_cls is False
    x = torch.randn(3, 1, 16, 16)
    with AttentionRecorder(model) as rec, torch.no_grad():
        model(x)
    with AttentionRecorder(reference) as ref_rec, torch.no_grad():
        reference(x)
    sim = AttentionSimilarity.from_models(model, reference)
    sim.update(rec.maps, ref_rec.maps)
    out = sim.compute()
    assert set(sim.names) == {"cosine", "js", "cka"} and 0 < out["cosine"].item() < 1
    stats = AttentionStatistics.from_model(model)
    stats.update(rec.maps)
    values = stats.compute()
    assert 0 < values["distance"].item() < math.hypot(12, 12) and values["entropy"].item() <= math.log(19)
    with pytest.raises(ConfigError, match="4 attention layers and the reference 2"):
        deeper = tiny_vit(depth=4)
        apply_surgery(deeper, "vit")
        AttentionSimilarity.from_models(deeper, reference)
    with pytest.raises(ConfigError, match="has no attention module that can record"):
        AttentionStatistics.from_model(tiny_vit())


def test_updates_inside_and_outside_inference_mode_share_the_metric():
    """Reused CPU scratch buffers must not leak inference tensors into grad-mode updates (or back)."""
    a, r = random_maps(4, 2, 3, LAYOUT.num_tokens, seed=15), random_maps(4, 2, 3, LAYOUT.num_tokens, seed=16)
    metric, reference = AttentionSimilarity(2, 3, LAYOUT), AttentionSimilarity(2, 3, LAYOUT)
    with torch.inference_mode():
        metric.update(a[:2], r[:2])
    metric.update(a[2:].requires_grad_(), r[2:])
    with torch.inference_mode():
        metric.update(a[:2], r[:2])
    reference.update(torch.cat([a[:2], a]), torch.cat([r[:2], r]))
    for key, value in reference.compute().items():
        torch.testing.assert_close(metric.compute()[key], value, msg=key)
