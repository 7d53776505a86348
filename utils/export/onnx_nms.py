"""Append non-maximum suppression to an exported ONNX detector, so it runs end to end without Python.

The exported graph maps ``images`` Tensor[B, 3, H, W] to decoded candidates Tensor[B, N, 5 + nc] (xywh input pixels,
objectness, class probabilities). ``add_nms`` appends, with standard ONNX operators only:

* single-label scores: each box keeps its best class, with confidence objectness x class probability (``detect.py``'s
  behaviour);
* the ``NonMaxSuppression`` operator per image and class (IoU and score thresholds strictly greater, like
  ``torchvision.ops.nms``);
* a sort by image then descending confidence, and at most ``max_det`` detections per image.

The graph output ``detections`` is Tensor[M, 7]: (batch index, x1, y1, x2, y2, confidence, class), xyxy in input
pixels. ``conf_thres`` (float[1]), ``iou_thres`` (float[1]) and ``max_det`` (int64[1]) are optional graph inputs
whose initializers hold the export-time defaults; a runtime may feed other values.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OUTPUT = "detections"


class _Graph:
    """Small helper that names and appends nodes and constants to ``graph``."""

    def __init__(self, graph: onnx.GraphProto, opset: int):
        self.graph, self.opset, self.n = graph, opset, 0

    def const(self, value, dtype=np.int64) -> str:
        self.n += 1
        name = f"nms_const_{self.n}"
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs) -> str | list[str]:
        self.n += 1
        outs = [f"nms_{op_type.lower()}_{self.n}_{i}" for i in range(n_out)]
        self.graph.node.append(helper.make_node(op_type, inputs, outs, name=f"nms_{op_type}_{self.n}", **attrs))
        return outs[0] if n_out == 1 else outs

    def slice_last(self, x: str, start: int, end: int) -> str:
        return self.op("Slice", [x, self.const([start]), self.const([end]), self.const([2])])

    def unsqueeze(self, x: str, axis: int) -> str:
        if self.opset >= 13:  # opset 13 moved ``axes`` of (Un)Squeeze from an attribute to an input
            return self.op("Unsqueeze", [x, self.const([axis])])
        return self.op("Unsqueeze", [x], axes=[axis])

    def squeeze(self, x: str, axis: int) -> str:
        if self.opset >= 13:
            return self.op("Squeeze", [x, self.const([axis])])
        return self.op("Squeeze", [x], axes=[axis])

    def reduce_max_last(self, x: str) -> str:
        if self.opset >= 18:  # opset 18 moved ``axes`` from an attribute to an input
            return self.op("ReduceMax", [x, self.const([2])], keepdims=1)
        return self.op("ReduceMax", [x], axes=[2], keepdims=1)


def add_nms(model: onnx.ModelProto, conf_thres: float = 0.25, iou_thres: float = 0.45, max_det: int = 300):
    """Replace the single decoded output of ``model`` by the ``detections`` Tensor[M, 7]; returns the model."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    if opset < 11:
        raise ValueError(f"--nms needs --opset 11 or newer (NonMaxSuppression, CumSum), got {opset}")
    graph = model.graph
    pred_name = graph.output[0].name
    g = _Graph(graph, opset)
    for name, value, dtype in (
        ("conf_thres", [conf_thres], np.float32),
        ("iou_thres", [iou_thres], np.float32),
        ("max_det", [max_det], np.int64),
    ):
        graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        elem = TensorProto.FLOAT if dtype is np.float32 else TensorProto.INT64
        graph.input.append(helper.make_tensor_value_info(name, elem, [1]))

    pred = g.op("Cast", [pred_name], to=TensorProto.FLOAT)  # fp16 exports: NonMaxSuppression takes float
    xy, wh = g.slice_last(pred, 0, 2), g.slice_last(pred, 2, 4)
    half_wh = g.op("Mul", [wh, g.const(0.5, np.float32)])
    boxes = g.op("Concat", [g.op("Sub", [xy, half_wh]), g.op("Add", [xy, half_wh])], axis=2)  # [B, N, 4] xyxy
    scores = g.op("Mul", [g.slice_last(pred, 5, 1 << 30), g.slice_last(pred, 4, 5)])  # [B, N, nc]
    best = g.op("Cast", [g.op("Equal", [scores, g.reduce_max_last(scores)])], to=TensorProto.FLOAT)
    scores = g.op("Transpose", [g.op("Mul", [scores, best])], perm=[0, 2, 1])  # [B, nc, N], best class only

    # selected: Tensor[K, 3] (batch, class, box) - up to max_det per image and class
    selected = g.op("NonMaxSuppression", [boxes, scores, "max_det", "iou_thres", "conf_thres"])
    sel_scores = g.op("GatherND", [scores, selected])  # [K]
    sel_boxes = g.op("GatherND", [boxes, g.op("Gather", [selected, g.const([0, 2])], axis=1)])  # [K, 4]
    batch_idx = g.op("Gather", [selected, g.const(0)], axis=1)  # [K]
    cls_idx = g.op("Gather", [selected, g.const(1)], axis=1)

    # order by image, then by descending confidence (confidence is in (0, 1], images are 2 apart)
    batch_f = g.op("Cast", [batch_idx], to=TensorProto.FLOAT)
    key = g.op("Sub", [sel_scores, g.op("Mul", [batch_f, g.const(2.0, np.float32)])])
    _, order = g.op("TopK", [key, g.op("Shape", [key])], n_out=2, largest=1, sorted=1)
    batch_idx, batch_f, cls_idx = (g.op("Gather", [t, order], axis=0) for t in (batch_idx, batch_f, cls_idx))
    sel_boxes, sel_scores = (g.op("Gather", [t, order], axis=0) for t in (sel_boxes, sel_scores))

    # rank of each detection within its image: running count of its image's one-hot column
    n_images = g.op("Gather", [g.op("Shape", [pred]), g.const(0)], axis=0)
    images = g.op("Range", [g.const(0), n_images, g.const(1)])  # [B]
    batch_col = g.unsqueeze(batch_idx, 1)  # [K, 1]
    onehot = g.op("Cast", [g.op("Equal", [batch_col, images])], to=TensorProto.INT64)  # [K, B]
    running = g.op("CumSum", [onehot, g.const(0)])
    rank = g.squeeze(g.op("GatherElements", [running, batch_col], axis=1), 1)  # 1-based
    keep = g.op("Less", [rank, g.op("Add", ["max_det", g.const([1])])])

    cls_f = g.op("Cast", [cls_idx], to=TensorProto.FLOAT)
    columns = [g.unsqueeze(t, 1) for t in (batch_f, sel_scores, cls_f)]
    table = g.op("Concat", [columns[0], sel_boxes, columns[1], columns[2]], axis=1)  # [K, 7]
    g.graph.node.append(helper.make_node("Compress", [table, keep], [OUTPUT], name="nms_output", axis=0))

    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["num_detections", 7]))
    onnx.checker.check_model(model)
    return model
