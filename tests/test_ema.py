import math

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from utils.train.ema import ModelEMA, load_plain_state
from utils.train.setup import plain_state_dict


def test_decay_ramp_and_update_formula():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = ModelEMA(model)
    assert ema.decay() == 0.0
    before = {k: v.clone() for k, v in ema.ema.state_dict().items()}
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.fill_(2.0)
    ema.update(model)
    d = 0.9999 * (1 - math.exp(-1 / 2000))
    assert ema.decay() == pytest.approx(d) and d == pytest.approx(4.99825e-4, rel=1e-5)
    now = ema.ema.state_dict()
    assert torch.allclose(now["0.weight"], d * before["0.weight"] + (1 - d) * model[0].weight)
    assert torch.allclose(now["1.running_mean"], torch.full((2,), 2 * (1 - d)))
    assert now["1.num_batches_tracked"] == before["1.num_batches_tracked"]  # integers are not averaged
    assert not any(p.requires_grad for p in ema.ema.parameters())
    ema.updates = 10**6
    assert ema.decay() == pytest.approx(0.9999)


def test_updates_follow_in_place_training_bit_for_bit_and_a_resumed_state():
    """The EMA keeps the model's tensor lists after its first update: later optimizer steps, a second model object
    and a loaded (resumed) state are all followed, with YOLOv5's mul-then-add arithmetic exactly."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4))
    ema = ModelEMA(model, tau=3)
    ref = {k: v.clone() for k, v in ema.ema.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    for _ in range(4):
        model(torch.rand(2, 2, 5, 5)).square().sum().backward()
        opt.step()
        opt.zero_grad()
        ema.update(model)
        d = ema.decay()
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                ref[k].mul_(d).add_(v, alpha=1 - d)
    assert all(torch.equal(ema.ema.state_dict()[k], ref[k]) for k in ref)
    other = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4))
    ema.update(other)  # another model object: its own tensors, not the cached ones
    d = ema.decay()
    assert torch.equal(ema.ema[0].weight, ref["0.weight"].mul(d).add_(other[0].weight.detach(), alpha=1 - d))
    ema.load_plain_state(plain_state_dict(model), updates=0)
    assert torch.equal(ema.ema[0].weight, model[0].weight) and ema.decay() == 0.0


def test_pruned_model_average_keeps_its_zeros():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3))
    prune.l1_unstructured(model[0], "weight", amount=0.5)
    ema = ModelEMA(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    for _ in range(5):
        model(torch.rand(2, 2, 5, 5)).square().sum().backward()
        opt.step()
        opt.zero_grad()
        ema.update(model)
    mask = model[0].weight_mask
    assert torch.equal(ema.ema[0].weight_mask, mask)
    for sd in (plain_state_dict(model), plain_state_dict(ema.ema)):
        assert set(sd) == {"0.weight", "0.bias"}
        assert int((sd["0.weight"] == 0).sum()) == int((mask == 0).sum()) == 36
    ema.ema(torch.rand(1, 2, 5, 5))  # the prune hook recomputes weight = weight_orig * mask
    assert int((ema.ema[0].weight == 0).sum()) == 36


def test_load_plain_state_maps_weight_to_weight_orig():
    src = nn.Conv2d(2, 3, 1)
    dst = nn.Conv2d(2, 3, 1)
    prune.l1_unstructured(dst, "weight", amount=0.5)
    mask = dst.weight_mask.clone()
    load_plain_state(dst, src.state_dict())
    assert torch.equal(dst.weight_orig, src.weight) and torch.equal(dst.weight_mask, mask)
    with pytest.raises(KeyError, match="missing"):
        load_plain_state(dst, {"bias": src.bias})
