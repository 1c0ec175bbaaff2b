"""YOLOv3 loss, as PaddleDetection's YOLOv3Loss + Gt2YoloTarget, with the targets built on the fly.

Per level (stride 32, 16, 8): every ground-truth box is assigned to the one anchor (of all nine)
whose shape matches it best (IoU of w/h centred at the origin); if that anchor belongs to the
level, the cell containing the box centre regresses it:
- x/y: sigmoid-BCE of the offset in the cell (scale_x_y 1.0);
- w/h: L1 in log space against log(gt / anchor);
- each weighted by 2 - w * h (w, h normalised), times the box's score (1, or the mixup weight);
- objectness: BCE, positives weighted by score, negatives ignored where a decoded predicted box
  overlaps any ground truth with IoU > ignore_thresh;
- classes: BCE against one-hot (optionally label-smoothed), weighted by score.
Each term is summed over anchors and cells and averaged over the batch.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from compress.config import TrainSection


def _iou_xyxy(a: paddle.Tensor, b: paddle.Tensor, eps: float = 1e-9) -> paddle.Tensor:
    """a [N, P, 4], b [N, M, 4] (x1, y1, x2, y2) -> IoU [N, P, M]."""
    a = a.unsqueeze(2)
    b = b.unsqueeze(1)
    lt = paddle.maximum(a[..., :2], b[..., :2])
    rb = paddle.minimum(a[..., 2:], b[..., 2:])
    wh = paddle.clip(rb - lt, min=0)
    inter = wh[..., 0] * wh[..., 1]
    area_a = paddle.clip(a[..., 2] - a[..., 0], min=0) * paddle.clip(a[..., 3] - a[..., 1], min=0)
    area_b = paddle.clip(b[..., 2] - b[..., 0], min=0) * paddle.clip(b[..., 3] - b[..., 1], min=0)
    return inter / (area_a + area_b - inter + eps)


def _cxcywh_to_xyxy(box: paddle.Tensor) -> paddle.Tensor:
    half = box[..., 2:4] * 0.5
    return paddle.concat([box[..., 0:2] - half, box[..., 0:2] + half], axis=-1)


class YOLOv3Loss(nn.Layer):
    """forward(outputs, gt_box, gt_class, gt_score, input_hw) -> dict of scalar losses with "loss" = total.

    outputs: the three raw head maps [N, A*(5+K), H/s, W/s] (strides as `downsample_ratios`).
    gt_box: [N, M, 4] float32 centre x, centre y, w, h normalised to [0, 1] by the input size;
    rows with w or h <= 0 are padding. gt_class: [N, M] int. gt_score: [N, M] float32 in [0, 1]
    (0 = padding). input_hw: (height, width) of the network input in pixels.
    anchors: 9 (w, h) in input pixels; anchor_masks: anchor indices per level. iou_thresh < 1
    (PaddleDetection's Gt2YoloTarget option, off by default): a box is also a positive of every
    other anchor whose shape IoU with it exceeds iou_thresh.
    """

    def __init__(
        self,
        num_classes: int,
        anchors: Sequence[Sequence[float]],
        anchor_masks: Sequence[Sequence[int]],
        downsample_ratios: Sequence[int] = (32, 16, 8),
        ignore_thresh: float = 0.7,
        label_smooth: bool = False,
        iou_thresh: float = 1.0,
    ) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.anchors = [[float(w), float(h)] for w, h in anchors]
        self.anchor_masks = [list(m) for m in anchor_masks]
        self.downsample_ratios = list(downsample_ratios)
        self.ignore_thresh = float(ignore_thresh)
        self.label_smooth = bool(label_smooth)
        self.iou_thresh = float(iou_thresh)

    @paddle.no_grad()
    def build_targets(
        self, gt_box: paddle.Tensor, gt_class: paddle.Tensor, gt_score: paddle.Tensor, input_hw: Sequence[int]
    ) -> List[paddle.Tensor]:
        """Per level, targets [N, A, H/s, W/s, 6 + K]: tx, ty, tw, th, scale weight, score, class one-hot."""
        height, width = int(input_hw[0]), int(input_hw[1])
        n, m = gt_box.shape[0], gt_box.shape[1]
        gt_box = gt_box.astype("float32")
        gt_score = gt_score.astype("float32")
        anchors = paddle.to_tensor(self.anchors, dtype="float32")  # [9, 2] pixels
        anchors_norm = anchors / paddle.to_tensor([[width, height]], dtype="float32")
        gw, gh = gt_box[..., 2], gt_box[..., 3]
        valid = (gw > 0) & (gh > 0) & (gt_score > 0)
        # Shape IoU of each box against every anchor, both centred at the origin: [N, M, 9].
        inter = paddle.minimum(gw.unsqueeze(-1), anchors_norm[:, 0]) * paddle.minimum(
            gh.unsqueeze(-1), anchors_norm[:, 1]
        )
        union = (gw * gh).unsqueeze(-1) + anchors_norm[:, 0] * anchors_norm[:, 1] - inter
        shape_iou = inter / (union + 1e-9)
        best = paddle.argmax(shape_iou, axis=-1)  # [N, M]
        onehot = F.one_hot(paddle.clip(gt_class.astype("int64"), 0, self.num_classes - 1), self.num_classes)
        batch_index = paddle.arange(n, dtype="int64").unsqueeze(-1).expand([n, m])
        targets = []
        for mask, stride in zip(self.anchor_masks, self.downsample_ratios):
            grid_h, grid_w = height // stride, width // stride
            na = len(mask)
            gx = gt_box[..., 0] * grid_w
            gy = gt_box[..., 1] * grid_h
            gi = paddle.clip(paddle.floor(gx), 0, grid_w - 1)
            gj = paddle.clip(paddle.floor(gy), 0, grid_h - 1)
            cells = n * na * grid_h * grid_w
            table = paddle.zeros([cells + 1, 6 + self.num_classes], dtype="float32")  # last row: unmatched
            for slot, anchor_index in enumerate(mask):
                matched = valid & (best == anchor_index)
                if self.iou_thresh < 1.0:
                    matched = matched | (valid & (shape_iou[..., anchor_index] > self.iou_thresh))
                anchor_w, anchor_h = self.anchors[anchor_index]
                safe_w = paddle.where(matched, gw * width, paddle.full_like(gw, anchor_w))
                safe_h = paddle.where(matched, gh * height, paddle.full_like(gh, anchor_h))
                values = paddle.concat(
                    [
                        (gx - gi).unsqueeze(-1),
                        (gy - gj).unsqueeze(-1),
                        paddle.log(safe_w / anchor_w).unsqueeze(-1),
                        paddle.log(safe_h / anchor_h).unsqueeze(-1),
                        (2.0 - gw * gh).unsqueeze(-1),
                        gt_score.unsqueeze(-1),
                        onehot.astype("float32"),
                    ],
                    axis=-1,
                )  # [N, M, 6 + K]
                flat_index = ((batch_index * na + slot) * grid_h + gj.astype("int64")) * grid_w + gi.astype("int64")
                flat_index = paddle.where(matched, flat_index, paddle.full_like(flat_index, cells))
                table = paddle.scatter(table, flat_index.flatten(), values.reshape([n * m, -1]), overwrite=True)
            targets.append(table[:cells].reshape([n, na, grid_h, grid_w, 6 + self.num_classes]))
        return targets

    def forward(
        self,
        outputs: Sequence[paddle.Tensor],
        gt_box: paddle.Tensor,
        gt_class: paddle.Tensor,
        gt_score: paddle.Tensor,
        input_hw: Sequence[int],
    ) -> Dict[str, paddle.Tensor]:
        targets = self.build_targets(gt_box, gt_class, gt_score, input_hw)
        gt_xyxy = _cxcywh_to_xyxy(gt_box.astype("float32"))
        totals = {"loss_xy": 0.0, "loss_wh": 0.0, "loss_obj": 0.0, "loss_cls": 0.0}
        for out, target, mask, stride in zip(outputs, targets, self.anchor_masks, self.downsample_ratios):
            level = self._level_loss(out.astype("float32"), target, gt_xyxy, [self.anchors[i] for i in mask], stride)
            for key, value in level.items():
                totals[key] = totals[key] + value
        totals["loss"] = totals["loss_xy"] + totals["loss_wh"] + totals["loss_obj"] + totals["loss_cls"]
        return totals

    def _level_loss(
        self, out: paddle.Tensor, target: paddle.Tensor, gt_xyxy: paddle.Tensor, anchors: List[List[float]], stride: int
    ) -> Dict[str, paddle.Tensor]:
        n, _, grid_h, grid_w = out.shape
        na = len(anchors)
        p = out.reshape([n, na, -1, grid_h, grid_w]).transpose([0, 1, 3, 4, 2])  # [N, A, H, W, 5 + K]
        px, py, pw, ph = p[..., 0:1], p[..., 1:2], p[..., 2:3], p[..., 3:4]
        pobj, pcls = p[..., 4:5], p[..., 5:]
        tx, ty, tw, th = target[..., 0:1], target[..., 1:2], target[..., 2:3], target[..., 3:4]
        tscale, tobj, tcls = target[..., 4:5], target[..., 5:6], target[..., 6:]
        weight = tscale * tobj

        loss_xy = weight * (
            F.binary_cross_entropy_with_logits(px, tx, reduction="none")
            + F.binary_cross_entropy_with_logits(py, ty, reduction="none")
        )
        loss_wh = weight * (paddle.abs(pw - tw) + paddle.abs(ph - th))

        # Ignore negatives whose decoded box already overlaps a ground truth well.
        with paddle.no_grad():
            grid_y, grid_x = paddle.meshgrid(
                paddle.arange(grid_h, dtype="float32"), paddle.arange(grid_w, dtype="float32")
            )
            anchor_t = paddle.to_tensor(anchors, dtype="float32").reshape([1, na, 1, 1, 2])
            cx = (F.sigmoid(px) + grid_x.reshape([1, 1, grid_h, grid_w, 1])) / grid_w
            cy = (F.sigmoid(py) + grid_y.reshape([1, 1, grid_h, grid_w, 1])) / grid_h
            bw = paddle.exp(paddle.clip(pw, max=10.0)) * anchor_t[..., 0:1] / (stride * grid_w)
            bh = paddle.exp(paddle.clip(ph, max=10.0)) * anchor_t[..., 1:2] / (stride * grid_h)
            pred = paddle.concat([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=-1).reshape([n, -1, 4])
            iou_max = _iou_xyxy(pred, gt_xyxy).max(axis=2)  # [N, A*H*W]
            keep_negative = (iou_max <= self.ignore_thresh).astype("float32")
            positive = (tobj.reshape([n, -1]) > 0).astype("float32")
        bce_obj = F.binary_cross_entropy_with_logits(pobj.reshape([n, -1]), positive, reduction="none")
        loss_obj = bce_obj * tobj.reshape([n, -1]) + bce_obj * (1.0 - positive) * keep_negative

        if self.label_smooth:
            delta = min(1.0 / self.num_classes, 1.0 / 40)
            tcls = tcls * (1.0 - delta) + (1.0 - tcls) * delta
        loss_cls = F.binary_cross_entropy_with_logits(pcls, tcls, reduction="none") * tobj

        return {
            "loss_xy": loss_xy.sum([1, 2, 3, 4]).mean(),
            "loss_wh": loss_wh.sum([1, 2, 3, 4]).mean(),
            "loss_obj": loss_obj.sum(-1).mean(),
            "loss_cls": loss_cls.sum([1, 2, 3, 4]).mean(),
        }


def make_loss(net: nn.Layer, train_cfg: TrainSection) -> YOLOv3Loss:
    """The YOLOv3 loss for `net`'s classes, anchors and strides with the recipe's train.loss settings."""
    return YOLOv3Loss(
        net.num_classes,
        net.anchors,
        net.anchor_masks,
        net.downsample_ratios,
        train_cfg.loss.ignore_thresh,
        train_cfg.loss.label_smooth,
        train_cfg.loss.iou_thresh,
    )
