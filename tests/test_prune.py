import pytest
import torch

import val
from utils.checkpoints import load_model
from utils.errors import UsageError
from utils.inference.prune import conv_sparsity, dense_from_sparse, global_l1_prune, make_permanent, sparse_state_dict


def test_global_prune_is_exact_and_uneven(yolov5n_pt, capsys):
    m = load_model(yolov5n_pt)
    per_layer = global_l1_prune(m, 0.3)
    out = capsys.readouterr().out
    assert "Pruning model... 0.3 global sparsity" in out
    line = [x for x in out.splitlines() if x.startswith("Pruned: ")][0]
    assert line.startswith("Pruned: 30.0% of conv weights zero (per layer ")
    assert conv_sparsity(m) == pytest.approx(0.30, abs=0.001)
    assert max(per_layer.values()) - min(per_layer.values()) > 0.2  # one threshold, different layer sparsities
    assert hasattr(m.model[0].conv, "weight_mask")  # the forward pre-hook (reparametrisation) is in place
    make_permanent(m)
    assert not hasattr(m.model[0].conv, "weight_mask") and conv_sparsity(m) == pytest.approx(0.30, abs=0.001)


def test_exclude_keeps_head_dense(yolov5n_pt):
    m = load_model(yolov5n_pt)
    global_l1_prune(m, 0.3, exclude=["model.24"])
    assert all(float((c.weight == 0).float().mean()) == 0 for c in m.model[24].m)
    with pytest.raises(UsageError, match="--prune 1.5"):
        global_l1_prune(load_model(yolov5n_pt), 1.5)


def test_sparse_encoding_round_trip_and_size(yolov5n_pt):
    m = make_permanent(load_model(yolov5n_pt))
    global_l1_prune(m, 0.3)
    make_permanent(m)
    state = m.state_dict()
    dense, sparse = sparse_state_dict(state)
    back = dense_from_sparse(sparse)
    for k, v in back.items():
        assert torch.equal(v, state[k].half().float())
    sparse_bytes = sum(e["mask"].numel() + 2 * e["values"].numel() for e in sparse.values())
    dense_bytes = sum(2 * state[k].numel() for k in sparse)
    assert sparse_bytes < 0.8 * dense_bytes


def test_pruned_model_keeps_accuracy_on_coco128(yolov5n_pt, coco128, tmp_path, capsys):
    """Issue 3: 30% global L1 sparsity over the fused weights keeps mAP50-95 >= 0.24 at 640 (dense: 0.350)."""
    result, _, _ = val.run(
        data="coco128", weights=[str(yolov5n_pt)], imgsz=640, prune=0.3, project=tmp_path, noplots=True, workers=2
    )
    assert "Pruned: 30.0% of conv weights zero" in capsys.readouterr().out
    assert result.map >= 0.24
