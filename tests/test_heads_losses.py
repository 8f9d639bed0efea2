"""Losses of the head: SDF penalty field, signed distance, patch BCE and the ablation supervisions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from heads_helpers import tiny_head_config
from scipy import ndimage

from part_point_ros.heads import HeadConfig, HeadOutput
from part_point_ros.heads.losses import (
    build_heatmap_targets,
    gaussian_heatmap_loss,
    gaussian_target,
    head_loss,
    innermost_point,
    instance_gaussian_target,
    l2_heatmap_loss,
    patch_bce,
    patch_softmax_ce,
    penalty_f,
    sdf_penalty,
    signed_distance,
    symmetric_sdf_penalty,
)


def config(**kw) -> HeadConfig:
    return tiny_head_config(8, **kw)


# ---------------------------------------------------------------- penalty_f


def test_penalty_f_hand_values():
    tau, gamma = 1.5, 1.0
    # x = 0: softplus(0) = ln 2 = 0.693147; x <= 0 so + γ·e^0 = 1  -> 1.693147
    # x = -3: x/τ = -2; softplus(-2) = ln(1 + e^-2) = ln(1.135335) = 0.126928; + e^-2 = 0.135335
    #         -> 0.262263
    # x = 3: x/τ = 2; softplus(2) = ln(1 + e^2) = ln(8.389056) = 2.126928; x > 0 so + γ·1 -> 3.126928
    x = torch.tensor([0.0, -3.0, 3.0], dtype=torch.float64)
    got = penalty_f(x, tau, gamma)
    assert torch.allclose(got, torch.tensor([1.693147, 0.262263, 3.126928], dtype=torch.float64), atol=1e-6)
    # γ = 2 doubles only the second term: x = -3 -> 0.126928 + 2·0.135335 = 0.397598
    assert math.isclose(float(penalty_f(torch.tensor(-3.0), tau, 2.0)), 0.397598, abs_tol=1e-5)


def test_penalty_f_is_continuous_increasing_and_does_not_overflow():
    x = torch.linspace(-20, 20, 4001, dtype=torch.float64)
    f = penalty_f(x)
    assert torch.all(f[1:] > f[:-1])  # deeper inside is always cheaper
    eps = torch.tensor([-1e-9, 1e-9], dtype=torch.float64)
    left, right = penalty_f(eps)
    assert abs(float(left - right)) < 1e-6  # e^0 = 1 on both sides of the boundary
    big = penalty_f(torch.tensor([1e4], dtype=torch.float32))
    assert torch.isfinite(big).all()


# ---------------------------------------------------------------- signed distance


def brute_force_sdf(mask: np.ndarray) -> np.ndarray:
    """Distance between pixel centres to the nearest pixel of the other class, minus half a pixel."""
    inside = np.argwhere(mask)
    outside = np.argwhere(~mask)
    out = np.zeros(mask.shape)
    for r in range(mask.shape[0]):
        for c in range(mask.shape[1]):
            other = outside if mask[r, c] else inside
            d = np.sqrt(((other - [r, c]) ** 2).sum(axis=1)).min()
            out[r, c] = -(d - 0.5) if mask[r, c] else d - 0.5
    return out


def masks() -> dict[str, np.ndarray]:
    rect = np.zeros((9, 12), bool)
    rect[2:7, 3:10] = True
    ell = np.zeros((10, 10), bool)
    ell[1:9, 1:4] = True
    ell[6:9, 1:9] = True
    dot = np.zeros((7, 7), bool)
    dot[3, 3] = True
    border = np.zeros((6, 8), bool)
    border[:, :3] = True  # touches the image border: the border is NOT a boundary
    return {"rect": rect, "ell": ell, "dot": dot, "border": border}


@pytest.mark.parametrize("name", ["rect", "ell", "dot", "border"])
def test_signed_distance_matches_brute_force_and_scipy(name):
    mask = masks()[name]
    sdf = signed_distance(mask)
    assert sdf.dtype == np.float32
    np.testing.assert_allclose(sdf, brute_force_sdf(mask), atol=1e-5)
    scipy_exact = np.where(
        mask, 0.5 - ndimage.distance_transform_edt(mask), ndimage.distance_transform_edt(~mask) - 0.5
    )
    np.testing.assert_allclose(sdf, scipy_exact, atol=1e-5)
    assert (sdf[mask] < 0).all() and (sdf[~mask] > 0).all()


def test_signed_distance_of_two_instances_is_the_sdf_of_their_union():
    a = np.zeros((12, 16), bool)
    a[1:5, 1:6] = True
    b = np.zeros((12, 16), bool)
    b[7:11, 9:15] = True
    sdf = signed_distance(np.stack([a, b]))
    union = a | b
    np.testing.assert_allclose(sdf, brute_force_sdf(union), atol=1e-5)
    # the pixel midway between the instances is outside; each instance has its own negative basin
    assert sdf[6, 7] > 0 and sdf[2, 3] < 0 and sdf[9, 12] < 0


def test_signed_distance_rule_for_empty_and_full_masks():
    diag = math.hypot(5, 7)
    np.testing.assert_allclose(signed_distance(np.zeros((5, 7), bool)), diag)
    np.testing.assert_allclose(signed_distance(np.ones((5, 7), bool)), -diag)
    with pytest.raises(ValueError, match="shape"):
        signed_distance(np.zeros(5, bool))


def test_innermost_point_and_gaussian_target():
    rect = masks()["rect"]  # rows 2..6, cols 3..9: the deepest row is 4; cols 5..7 tie, first wins
    assert innermost_point(rect) == (4, 5)
    assert innermost_point(np.zeros((3, 3), bool)) is None
    assert innermost_point(np.ones((4, 6), bool)) == (2, 3)
    g = gaussian_target(rect, sigma=2.0)
    assert g.shape == rect.shape and g[4, 5] == pytest.approx(1.0)
    assert g[4, 7] == pytest.approx(math.exp(-4 / 8))  # two pixels away: exp(-d²/2σ²)
    assert not gaussian_target(np.zeros((3, 3), bool), 2.0).any()


def test_instance_gaussian_target_puts_a_peak_on_each_piece_weighted_by_area():
    m = np.zeros((20, 30), bool)
    m[2:9, 2:9] = True  # 49 px, innermost (5, 5)
    m[12:17, 20:25] = True  # 25 px, innermost (14, 22)
    g = instance_gaussian_target(m, sigma=1.5)
    assert g[5, 5] == pytest.approx(1.0) and g[14, 22] == pytest.approx(25 / 49)
    peaks = {
        tuple(map(int, np.unravel_index(np.argmax(np.where(mask, g, 0)), g.shape)))
        for mask in (
            np.pad(np.ones((10, 15), bool), ((0, 10), (0, 15))),
            np.pad(np.ones((10, 15), bool), ((10, 0), (15, 0))),
        )
    }
    assert peaks == {(5, 5), (14, 22)}
    one = m.copy()
    one[12:17, 20:25] = False
    np.testing.assert_allclose(instance_gaussian_target(one, 1.5), gaussian_target(one, 1.5))  # one piece
    assert not instance_gaussian_target(np.zeros((4, 4), bool), 1.5).any()
    cfg = config(supervision="gaussian", gaussian_instances=True, gaussian_sigma=1.5)
    np.testing.assert_allclose(build_heatmap_targets(m, cfg)["gaussian"], g)
    np.testing.assert_allclose(
        build_heatmap_targets(m, config(supervision="gaussian", gaussian_sigma=1.5))["gaussian"],
        gaussian_target(m, 1.5),  # without the flag: one peak, at the innermost point of the union
    )


# ---------------------------------------------------------------- sdf_penalty


def test_sdf_penalty_equals_a_brute_force_loop():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 9, 12, generator=gen, dtype=torch.float64)
    sdf = torch.from_numpy(np.stack([signed_distance(masks()["rect"]), brute_force_sdf(~masks()["rect"])]))
    got = sdf_penalty(logits, sdf, tau=1.5, gamma=0.7)
    for b in range(2):
        z = sum(math.exp(float(v)) for v in logits[b].flatten())
        want = 0.0
        for r in range(9):
            for c in range(12):
                x = float(sdf[b, r, c]) / 1.5
                f = math.log1p(math.exp(x)) + 0.7 * (math.exp(x) if x <= 0 else 1.0)
                want += math.exp(float(logits[b, r, c])) / z * f
        assert float(got[b]) == pytest.approx(want, rel=1e-9)


def peaked(shape, point, height=12.0) -> torch.Tensor:
    logits = torch.zeros(1, *shape)
    logits[0, point[0], point[1]] = height
    return logits


def test_heatmap_at_the_innermost_point_has_the_lowest_sdf_loss():
    mask = masks()["ell"]
    sdf = torch.from_numpy(signed_distance(mask))[None]
    inner = innermost_point(mask)
    losses = {
        "innermost": sdf_penalty(peaked(mask.shape, inner), sdf),
        "boundary": sdf_penalty(peaked(mask.shape, (1, 1)), sdf),  # a corner pixel of the mask
        "outside": sdf_penalty(peaked(mask.shape, (2, 8)), sdf),
    }
    assert losses["innermost"] < losses["boundary"] < losses["outside"]
    sym = {k: symmetric_sdf_penalty(peaked(mask.shape, p), sdf) for k, p in [("i", inner), ("b", (1, 1))]}
    assert sym["i"] < sym["b"]
    target = torch.from_numpy(gaussian_target(mask, 2.0))[None]
    assert gaussian_heatmap_loss(peaked(mask.shape, inner), target) < gaussian_heatmap_loss(
        peaked(mask.shape, (1, 1)), target
    )


def test_sdf_penalty_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(1, 4, 4\).*\(1, 5, 5\)"):
        sdf_penalty(torch.zeros(1, 5, 5), torch.zeros(1, 4, 4))


# ---------------------------------------------------------------- BCE, L2, head_loss


def test_patch_bce_equals_a_brute_force_loop():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64)
    targets = torch.rand(2, 5, generator=gen, dtype=torch.float64)
    got = patch_bce(logits, targets)
    for b in range(2):
        total = 0.0
        for h in range(3):
            for p in range(5):
                s = 1 / (1 + math.exp(-float(logits[b, h, p])))
                t = float(targets[b, p])
                total -= t * math.log(s) + (1 - t) * math.log(1 - s)
        assert float(got[b]) == pytest.approx(total / 15, rel=1e-9)
    with pytest.raises(ValueError, match=r"\(2, 5\).*\(2, 4\)"):
        patch_bce(logits, targets[:, :4])


def test_patch_softmax_ce_equals_a_brute_force_loop():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64)
    targets = torch.rand(2, 5, generator=gen, dtype=torch.float64)
    targets[1] = 0.0  # a part no patch covers: no patch term
    got = patch_softmax_ce(logits, targets)
    share = [float(t) / float(targets[0].sum()) for t in targets[0]]
    total = 0.0
    for h in range(3):
        norm = math.log(sum(math.exp(float(x)) for x in logits[0, h]))
        total -= sum(s * (float(logits[0, h, p]) - norm) for p, s in enumerate(share))
    assert float(got[0]) == pytest.approx(total / 3, rel=1e-9)
    assert float(got[1]) == 0.0
    with pytest.raises(ValueError, match=r"\(2, 5\).*\(2, 4\)"):
        patch_softmax_ce(logits, targets[:, :4])


def test_head_loss_uses_the_configured_patch_term():
    out = fake_output()
    mask = np.zeros((12, 16), bool)
    mask[3:9, 4:12] = True
    cfg = config(patch_loss="softmax_ce")
    heat = {key: torch.from_numpy(np.stack([v, v])) for key, v in build_heatmap_targets(mask, cfg).items()}
    patch = torch.rand(2, 12)
    losses = head_loss(out, patch_targets=patch, heatmap_targets=heat, config=cfg)
    assert float(losses["bce"]) == pytest.approx(float(patch_softmax_ce(out.attn_logits, patch).mean()))
    assert float(losses["bce"]) != pytest.approx(float(patch_bce(out.attn_logits, patch).mean()))
    both = head_loss(
        out, patch_targets=patch, heatmap_targets=heat, config=config(patch_loss="bce+softmax_ce")
    )
    expected = patch_bce(out.attn_logits, patch).mean() + patch_softmax_ce(out.attn_logits, patch).mean()
    assert float(both["bce"]) == pytest.approx(float(expected))
    with pytest.raises(ValueError, match="patch_loss"):
        config(patch_loss="focal")


def test_l2_heatmap_loss_by_hand():
    logits = torch.tensor([[[0.0, math.log(3.0)]]])  # sigmoid: 0.5, 0.75
    mask = torch.tensor([[[1.0, 0.0]]])
    # ((0.5 - 1)² + (0.75 - 0)²) / 2 = (0.25 + 0.5625) / 2 = 0.40625
    assert float(l2_heatmap_loss(logits, mask)[0]) == pytest.approx(0.40625)


def fake_output(batch=2, k=2, grid=(3, 4), up=4, seed=0) -> HeadOutput:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, k, grid[0] * grid[1], generator=gen)
    heat = torch.randn(batch, grid[0] * up, grid[1] * up, generator=gen)
    return HeadOutput(attn_logits=logits, attn=logits.softmax(-1), heatmap=heat)


@pytest.mark.parametrize("supervision", ["sdf", "l2", "gaussian", "symmetric_sdf"])
def test_head_loss_is_bce_plus_lambda_point(supervision):
    cfg = config(supervision=supervision, sdf_lambda=0.25)
    out = fake_output()
    mask = np.zeros((12, 16), bool)
    mask[3:9, 4:12] = True
    targets = build_heatmap_targets(mask, cfg)
    heat_targets = {key: torch.from_numpy(np.stack([v, v])) for key, v in targets.items()}
    patch = torch.rand(2, 12)
    losses = head_loss(out, patch_targets=patch, heatmap_targets=heat_targets, config=cfg)
    assert set(losses) == {"total", "bce", "point", "presence"} and float(losses["presence"]) == 0
    assert float(losses["bce"]) == pytest.approx(float(patch_bce(out.attn_logits, patch).mean()))
    assert float(losses["total"]) == pytest.approx(float(losses["bce"]) + 0.25 * float(losses["point"]))
    with pytest.raises(KeyError, match="build_heatmap_targets"):
        head_loss(out, patch_targets=patch, heatmap_targets={"nothing": patch}, config=cfg)


def test_build_heatmap_targets_keys_and_units():
    mask = masks()["rect"]
    assert set(build_heatmap_targets(mask, config())) == {"sdf"}
    assert set(build_heatmap_targets(mask, config(supervision="l2"))) == {"mask"}
    assert set(build_heatmap_targets(mask, config(supervision="gaussian"))) == {"gaussian"}
    px = build_heatmap_targets(mask, config())["sdf"]
    cells = build_heatmap_targets(mask, config(sdf_units="grid_px"))["sdf"]
    np.testing.assert_allclose(cells, px / 4)  # 4 heatmap pixels per grid cell (n_upsample=2)
