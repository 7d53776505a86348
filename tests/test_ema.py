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
