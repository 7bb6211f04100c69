"""Evaluation: confusion counting, both mIoU conventions, base/novel/hIoU, warnings, pictures.

The hand-built case (``HAND_GT`` / ``HAND_PRED``, 5 classes, base 0-2, novel 3-4):
  class 0: 4 GT pixels, 3 right, 1 predicted as 1          IoU 3/4
  class 1: 2 GT pixels, both right, plus that 1 FP         IoU 2/3
  class 2: no GT, predicted once (a class-3 pixel)         IoU 0   (prediction only)
  class 3: 3 GT pixels, 1 right, 1 -> 2, 1 -> 255 (miss)   IoU 1/3
  class 4: no GT; predicted only on ignored pixels         IoU None (absent from both)
  two GT pixels are ignore (255), both predicted 4.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from simformer_cli.evaluation import (
    REPORT_COLUMNS,
    ConfusionMatrix,
    EvalReport,
    colorize,
    compute_report,
    format_report_rows,
    iou_bar_chart,
    overlay_triptych,
    palette,
    write_png,
)

NAMES = ["wall", "sky", "road", "cat", "boat"]
BASE, NOVEL = [0, 1, 2], [3, 4]
HAND_GT = np.array([0, 0, 0, 0, 1, 1, 3, 3, 3, 255, 255])
HAND_PRED = np.array([0, 0, 0, 1, 1, 1, 3, 2, 255, 4, 4])


def hand_report(dtype=np.uint8) -> EvalReport:
    cm = ConfusionMatrix(5, 255)
    cm.update(HAND_PRED.astype(dtype).reshape(1, -1), HAND_GT.astype(dtype).reshape(1, -1))
    return compute_report(cm, NAMES, BASE, NOVEL, num_images=cm.num_images, ignored_pixels=cm.ignored_pixels)


def direct_counts(pred: np.ndarray, gt: np.ndarray, k: int, ignore: int) -> tuple[np.ndarray, int]:
    """Pixel-by-pixel reference: (K, K+1) table with misses in column K, and the ignored count."""
    counts = np.zeros((k, k + 1), dtype=np.int64)
    ignored = 0
    for p, g in zip(pred.ravel().tolist(), gt.ravel().tolist()):
        if g == ignore:
            ignored += 1
        else:
            counts[g, p if 0 <= p < k else k] += 1
    return counts, ignored


# ---------------------------------------------------------------- confusion matrix


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.uint16])
def test_hand_built_counts(dtype):
    cm = ConfusionMatrix(5, 255)
    cm.update(HAND_PRED.astype(dtype), HAND_GT.astype(dtype))
    assert cm.matrix.dtype == np.int64 and cm.matrix.shape == (5, 5)
    assert cm.matrix[0].tolist() == [3, 1, 0, 0, 0]
    assert cm.matrix[3].tolist() == [0, 0, 1, 1, 0]
    assert cm.missed.tolist() == [0, 0, 0, 1, 0]
    # The two ignored pixels were predicted 4, yet class 4 gets no false positive.
    assert cm.matrix[:, 4].sum() == 0
    assert cm.ignored_pixels == 2 and cm.num_images == 1


def test_prediction_ignore_value_on_labelled_pixel_is_a_miss():
    cm = ConfusionMatrix(3, 255)
    cm.update(np.full((4, 4), 255, np.uint8), np.ones((4, 4), np.uint8))
    assert cm.matrix.sum() == 0 and cm.missed.tolist() == [0, 16, 0]
    report = compute_report(cm, ["a", "b", "c"], [0, 1], [2], num_images=1, ignored_pixels=0)
    row = report.per_class[1]
    assert (row.iou, row.gt_pixels, row.pred_pixels) == (0.0, 16, 0)
    assert all(r.pred_pixels == 0 for r in report.per_class)
    assert any("not a class id" in w for w in report.warnings)


@pytest.mark.parametrize("dtype", [np.uint8, np.int32])
def test_chunks_and_merge_equal_one_shot(dtype):
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 6, (40, 50)).astype(dtype)
    gt[rng.random(gt.shape) < 0.1] = 255
    pred = rng.integers(0, 7, (40, 50)).astype(dtype)
    whole = ConfusionMatrix(6)
    whole.update(pred, gt)
    chunked, other = ConfusionMatrix(6), ConfusionMatrix(6)
    chunked.update(pred[:13], gt[:13])
    chunked.update(pred[13:], gt[13:])
    other.update(pred[:, :7], gt[:, :7])
    other.update(pred[:, 7:], gt[:, 7:])
    assert np.array_equal(chunked.counts, whole.counts)
    merged = ConfusionMatrix(6).merge(other).merge(ConfusionMatrix(6))
    assert np.array_equal(merged.counts, whole.counts)
    assert merged.ignored_pixels == whole.ignored_pixels and merged.num_images == 2


@settings(max_examples=80, deadline=None)
@given(
    k=st.integers(1, 12),
    gt_dtype=st.sampled_from(["u1", "u2", "i4", "i8"]),
    pred_dtype=st.sampled_from(["u1", "u2", "i2", ">i4", "i8"]),
    shape=st.tuples(st.integers(0, 9), st.integers(1, 11)),
    seed=st.integers(0, 2**32 - 1),
)
def test_counts_equal_direct_counting(k, gt_dtype, pred_dtype, shape, seed):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, k, shape)
    gt[rng.random(shape) < 0.2] = 255
    pred = rng.integers(0, k + 3, shape)  # some predictions are no class
    pred[rng.random(shape) < 0.1] = 255
    if np.dtype(pred_dtype).itemsize > 1:
        pred[rng.random(shape) < 0.1] = 256  # truncated to a byte it would read as class 0
    if np.dtype(pred_dtype).kind == "i":
        pred[rng.random(shape) < 0.1] = -1
    cm = ConfusionMatrix(k, 255)
    cm.update(pred.astype(pred_dtype), gt.astype(gt_dtype))
    counts, ignored = direct_counts(pred, gt, k, 255)
    assert np.array_equal(cm.counts, counts)
    assert cm.ignored_pixels == ignored


def test_signed_predictions_and_wide_ignore():
    cm = ConfusionMatrix(300, ignore_index=65535)
    gt = np.array([0, 299, 65535, 5], dtype=np.uint16)
    cm.update(np.array([0, 299, 7, -1]), gt)
    assert cm.matrix[0, 0] == 1 and cm.matrix[299, 299] == 1 and cm.missed[5] == 1
    assert cm.ignored_pixels == 1


def test_bad_input_is_refused_and_leaves_matrix_unchanged():
    cm = ConfusionMatrix(4)
    cm.update(np.zeros(3, np.uint8), np.zeros(3, np.uint8))
    before = cm.counts
    with pytest.raises(ValueError, match="neither a class id"):
        cm.update(np.zeros(3, np.uint8), np.array([1, 9, 200], np.uint8))
    with pytest.raises(ValueError, match="neither a class id"):
        cm.update(np.zeros(2, np.int64), np.array([-3, 1]))
    with pytest.raises(ValueError, match="shape"):
        cm.update(np.zeros(3, np.uint8), np.zeros(4, np.uint8))
    with pytest.raises(ValueError, match="integer"):
        cm.update(np.zeros(3, np.float32), np.zeros(3, np.uint8))
    assert np.array_equal(cm.counts, before) and cm.num_images == 1
    with pytest.raises(ValueError, match="is a class id"):
        ConfusionMatrix(4, ignore_index=2)
    with pytest.raises(ValueError, match="merge"):
        cm.merge(ConfusionMatrix(5))


def test_from_array_round_trip():
    cm = ConfusionMatrix(5)
    cm.update(HAND_PRED.astype(np.uint8), HAND_GT.astype(np.uint8))
    again = ConfusionMatrix.from_array(cm.counts, ignored_pixels=2, num_images=1)
    assert np.array_equal(again.counts, cm.counts)
    square = ConfusionMatrix.from_array(cm.matrix)
    assert np.array_equal(square.matrix, cm.matrix) and square.missed.sum() == 0
    for bad in (np.zeros((3, 5), np.int64), -np.ones((2, 2), np.int64), np.zeros((2, 2))):
        with pytest.raises(ValueError):
            ConfusionMatrix.from_array(bad)


# ---------------------------------------------------------------- metrics


@pytest.mark.parametrize("dtype", [np.uint8, np.int64])
def test_hand_built_report_both_conventions(dtype):
    report = hand_report(dtype)
    ious = [r.iou for r in report.per_class]
    assert ious == [75.0, pytest.approx(66.6667), 0.0, pytest.approx(33.3333), None]
    # SimFormer / old detectron2 / mmseg: the prediction-only class 2 counts as 0.
    assert report.miou == pytest.approx(100 * 1.75 / 4, abs=1e-4)
    # detectron2 today: only classes with ground truth.
    assert report.miou_present_only == pytest.approx(100 * 1.75 / 3, abs=1e-4)
    # Group means leave prediction-only classes out, as SimFormer's BaseIoU/NovelIoU do.
    assert report.base_miou == pytest.approx(100 * 17 / 24, abs=1e-4)
    assert report.novel_miou == pytest.approx(100 / 3, abs=1e-4)
    assert report.hiou == pytest.approx(100 * 272 / 600, abs=1e-4)
    assert report.pixel_accuracy == pytest.approx(100 * 6 / 9, abs=1e-4)
    assert report.mean_accuracy == pytest.approx(100 * (0.75 + 1 + 1 / 3) / 3, abs=1e-4)
    assert report.fwiou == pytest.approx(100 * 16 / 27, abs=1e-4)
    assert [r.gt_pixels for r in report.per_class] == [4, 2, 0, 3, 0]
    assert [r.pred_pixels for r in report.per_class] == [3, 3, 1, 1, 0]
    assert [r.acc for r in report.per_class][2:] == [None, pytest.approx(33.3333), None]
    assert [r.split_role for r in report.per_class] == ["base"] * 3 + ["novel"] * 2
    assert (report.evaluated_classes, report.ignored_pixels, report.num_images) == (4, 2, 1)


def test_report_matches_independent_formulas_on_random_tables():
    rng = np.random.default_rng(7)
    for _ in range(20):
        k = int(rng.integers(2, 12))
        table = rng.integers(0, 50, (k, k)) * (rng.random((k, k)) < 0.4)
        table[rng.integers(0, k)] += 1  # at least one labelled pixel
        tp, gt, pred = np.diag(table), table.sum(1), table.sum(0)
        union = gt + pred - tp
        iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
        old_d2 = np.nansum(np.where(gt > 0, iou, np.nan)) / (union > 0).sum()  # detectron2 <= v0.6
        new_d2 = np.nanmean(np.where(gt > 0, iou, np.nan))  # detectron2 since 2022-07
        base = sorted(rng.choice(k, size=k // 2 + 1, replace=False).tolist())
        novel = sorted(set(range(k)) - set(base))
        report = compute_report(table, [str(i) for i in range(k)], base, novel, num_images=1, ignored_pixels=0)
        assert report.miou == pytest.approx(100 * old_d2, abs=1e-4)
        assert report.miou_present_only == pytest.approx(100 * new_d2, abs=1e-4)
        assert report.pixel_accuracy == pytest.approx(100 * tp.sum() / gt.sum(), abs=1e-4)


def test_dataset_level_not_per_image_average():
    cm = ConfusionMatrix(2)
    cm.update(np.array([0, 0, 0, 0], np.uint8), np.array([0, 0, 0, 1], np.uint8))
    cm.update(np.array([1], np.uint8), np.array([1], np.uint8))
    report = compute_report(cm, ["a", "b"], [0], [1], num_images=2, ignored_pixels=0)
    # Pooled: class 0 IoU 3/4, class 1 IoU 1/2. A per-image mean would give something else.
    assert report.miou == pytest.approx(62.5)


def test_hiou_is_zero_when_a_group_scores_zero():
    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 1, 1], np.uint8), np.array([0, 1, 2], np.uint8))
    report = compute_report(cm, ["a", "b", "c"], [0, 1], [2], num_images=1, ignored_pixels=0)
    assert report.novel_miou == 0.0 and report.hiou == 0.0 and report.base_miou == pytest.approx(75.0)


def test_warnings_fire():
    cm = ConfusionMatrix(3)
    gt = np.full((10, 10), 255, np.uint8)
    gt[0, :4] = 0
    cm.update(np.zeros((10, 10), np.uint8), gt)
    report = compute_report(cm, ["a", "b", "c"], [0, 1], [2], num_images=1, ignored_pixels=cm.ignored_pixels)
    text = " | ".join(report.warnings)
    assert "only 1 class evaluated" in text
    assert "96.0% of ground-truth pixels are ignore" in text
    assert "no novel class" in text
    assert report.novel_miou is None and report.hiou is None and report.miou == 100.0
    assert not any("no base class" in w for w in report.warnings)
    assert hand_report().warnings == [
        "1 labelled pixels have a prediction that is not a class id; they count as misses"
    ]


def test_bad_report_inputs_are_refused():
    table = np.eye(3, dtype=np.int64)
    with pytest.raises(ValueError, match="nothing to evaluate"):
        compute_report(np.zeros((3, 3), np.int64), ["a", "b", "c"], [0], [1, 2], num_images=0, ignored_pixels=5)
    with pytest.raises(ValueError, match="class names"):
        compute_report(table, ["a", "b"], [0], [1, 2], num_images=1, ignored_pixels=0)
    with pytest.raises(ValueError, match="both base and novel"):
        compute_report(table, ["a", "b", "c"], [0, 1], [1, 2], num_images=1, ignored_pixels=0)
    with pytest.raises(ValueError, match="missing"):
        compute_report(table, ["a", "b", "c"], [0], [1], num_images=1, ignored_pixels=0)


def test_report_model_is_strict_and_round_trips():
    report = hand_report()
    assert EvalReport.model_validate_json(report.model_dump_json()) == report
    data = report.model_dump()
    for field in ("miou", "base_miou", "novel_miou", "hiou", "miou_present_only", "pixel_accuracy", "per_class"):
        assert field in data
    assert set(data["per_class"][0]) >= {"id", "name", "iou", "gt_pixels", "pred_pixels", "split_role"}
    with pytest.raises(ValidationError):
        EvalReport.model_validate({**data, "surprise": 1})
    with pytest.raises(ValidationError):
        report.miou = 1.0


def test_format_rows_sorted_by_iou_none_last():
    rows = format_report_rows(hand_report())
    assert [r[0] for r in rows] == ["0", "1", "3", "2", "4"]
    assert rows[0] == ("0", "wall", "base", "75.00", "75.00", "4", "3")
    assert rows[-1][3] == "n/a" and len(rows[0]) == len(REPORT_COLUMNS)
    assert [r[0] for r in format_report_rows(hand_report(), descending=False)] == ["2", "3", "1", "0", "4"]


# ---------------------------------------------------------------- pictures


def test_palette_is_deterministic_and_separated():
    colors = palette(150)
    assert colors.shape == (150, 3) and colors.dtype == np.uint8
    assert np.array_equal(colors, palette(150)) and np.array_equal(palette(10), colors[:10])
    assert len({tuple(c) for c in colors.tolist()}) == 150
    assert not any(c in ([0, 0, 0], [255, 255, 255]) for c in colors.tolist())


def test_colorize_ignore_black_strays_white():
    colors = palette(3)
    out = colorize(np.array([[0, 2], [255, 7]], np.uint8), colors, 255)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == colors[0].tolist() and out[0, 1].tolist() == colors[2].tolist()
    assert out[1, 0].tolist() == [0, 0, 0] and out[1, 1].tolist() == [255, 255, 255]


def test_triptych_shapes_and_png_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    gt = np.zeros((64, 80), np.uint8)
    gt[10:40, 20:60] = 3
    gt[:, :5] = 255
    pred = np.zeros_like(gt)
    pred[12:44, 18:60] = 3
    colors = palette(len(NAMES))
    picture = overlay_triptych(image, gt, pred, NAMES, colors, 255)
    assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[2] == 3
    assert picture.shape[1] == 3 * 320 + 2 * 6 and picture.shape[0] > 256  # enlarged x4 to 256 high
    only_pred = overlay_triptych(image[:, :, 0], None, pred, NAMES, colors, 255, min_height=1)
    assert only_pred.shape[1] == 2 * 80 + 6
    with pytest.raises(ValueError, match="does not match"):
        overlay_triptych(image, gt[:10], pred, NAMES, colors)

    path = write_png(tmp_path / "deep" / "er" / "tri.png", picture)
    back = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(cv2.cvtColor(back, cv2.COLOR_BGR2RGB), picture)
    red = np.zeros((2, 2, 3), np.uint8)
    red[..., 0] = 255
    assert cv2.imread(str(write_png(tmp_path / "red.png", red)))[0, 0].tolist() == [0, 0, 255]  # BGR on disk


def test_bar_chart_scales_to_150_classes(tmp_path):
    rng = np.random.default_rng(3)
    k = 150
    gt = rng.integers(0, k, (60, 300)).astype(np.uint8)
    pred = np.where(rng.random(gt.shape) < 0.6, gt, rng.integers(0, k, gt.shape)).astype(np.uint8)
    cm = ConfusionMatrix(k)
    cm.update(pred, gt)
    names = [f"class_{i}" for i in range(k)]
    report = compute_report(cm, names, list(range(112)), list(range(112, k)), num_images=1, ignored_pixels=0)
    base_color, novel_color = (31, 119, 180), (255, 127, 14)
    chart = iou_bar_chart(report, base_color, novel_color)
    assert chart.dtype == np.uint8 and chart.shape[2] == 3
    assert chart.shape[0] > 18 * k and chart.shape[1] < 2000
    flat = chart.reshape(-1, 3)
    for color in (base_color, novel_color):
        assert (flat == color).all(axis=1).sum() > 100
    small = iou_bar_chart(hand_report())
    assert small.shape[0] < chart.shape[0]
    assert write_png(tmp_path / "bars.png", chart).stat().st_size > 0


def _diagnostics(counts: list[list[int]], novel: list[int]):  # noqa: ANN202
    """The report's novel diagnostics of a hand-built (K, K+1) table: rows ground truth, columns
    prediction, last column "not a class"."""
    table = np.asarray(counts, dtype=np.int64)
    k = table.shape[0]
    names = [f"c{i}" for i in range(k)]
    report = compute_report(table, names, [c for c in range(k) if c not in novel], novel,
                            num_images=1, ignored_pixels=0)
    return report, report.novel


def test_swapped_novel_names_are_found_but_not_named():
    #            base  A    B    none
    counts = [[100,   0,   0,   0],   # base
              [0,     0,  50,   0],   # A, all predicted B
              [0,    30,   0,   0]]   # B, all predicted A
    report, novel = _diagnostics(counts, [1, 2])
    assert report.novel_miou == 0.0
    assert novel.union_iou == 100.0 and novel.renamed_miou == 100.0
    assert novel.renaming == {"c2": "c1", "c1": "c2"}
    rows = {row.name: row for row in novel.confusion}
    assert rows["c1"].as_novel == {"c1": 0.0, "c2": 100.0} and rows["c1"].as_base == 0.0


def test_one_novel_name_absorbing_the_others():
    #            base  A    B    C   none
    counts = [[90,   10,   0,   0,   0],   # base: 10 pixels predicted A
              [5,    40,   0,   0,   5],   # A: 40 right, 5 as base, 5 as nothing
              [0,    30,   0,   0,   0],   # B: all called A
              [10,   10,   0,   0,   0]]   # C: half called A, half base
    report, novel = _diagnostics(counts, [1, 2, 3])
    # A: TP 40, gt 50, pred 10 + 40 + 30 + 10 = 90 -> 40 / 100; B and C: 0
    assert report.novel_miou == pytest.approx(100 * (0.4 + 0 + 0) / 3, abs=1e-3)
    # union: found 40 + 30 + 10 = 80 of gt 50 + 30 + 20 = 100 and pred 90 -> 80 / 110
    assert novel.union_iou == pytest.approx(100 * 80 / 110, abs=1e-3)
    # renaming cannot split one predicted class between three: A keeps its name, the best it can do
    assert novel.renamed_miou == pytest.approx(report.novel_miou, abs=1e-3)
    rows = {row.name: row for row in novel.confusion}
    assert rows["c1"].as_base == 10.0 and rows["c1"].as_nothing == 10.0 and rows["c1"].as_novel["c1"] == 80.0
    assert rows["c3"].as_base == 50.0 and rows["c3"].as_novel["c1"] == 50.0


def test_no_novel_ground_truth_gives_no_diagnostics():
    report, novel = _diagnostics([[10, 0, 0], [0, 0, 0]], [1])
    assert novel is None and report.novel_miou is None


# ---------------------------------------------------------------- boundary quality


def two_halves(size: int = 8) -> np.ndarray:
    """Ground truth: class 0 (base) on columns 0-3, class 1 (novel) on columns 4-7."""
    label = np.zeros((size, size), dtype=np.uint8)
    label[:, size // 2 :] = 1
    return label


def test_boundary_band_follows_label_edges_and_not_ignore():
    from simformer_cli.evaluation.boundary import boundary_band

    label = two_halves()
    assert boundary_band(label, 1, 255).any(0).tolist() == [False, False, False, True, True, False, False, False]
    assert boundary_band(label, 2, 255).any(0).tolist() == [False, False, True, True, True, True, False, False]
    assert boundary_band(label, 2, 255).all(0).tolist() == boundary_band(label, 2, 255).any(0).tolist()
    unlabelled_patch = np.zeros((8, 8), dtype=np.uint8)
    unlabelled_patch[2:5, 2:5] = 255  # ignore inside one class: no edge
    assert not boundary_band(unlabelled_patch, 3, 255).any()


def test_boundary_miou_on_a_hand_built_case():
    from simformer_cli.evaluation.boundary import BoundaryConfusion

    truth = two_halves()
    shifted = truth.copy()
    shifted[:, 3] = 1  # the border drawn one pixel too far left
    far_off = truth.copy()
    far_off[:, 0] = 1  # one wrong column far from the border
    for prediction, whole, near in ((shifted, (75.0 + 80.0) / 2, (0.0 + 50.0) / 2), (far_off, (75.0 + 80.0) / 2, 100.0)):
        band = BoundaryConfusion(2, 255, width=1)
        band.update(prediction, truth)
        result = band.result(["a", "b"], [0], [1])
        whole_table = ConfusionMatrix(2, 255)
        whole_table.update(prediction, truth)
        assert compute_report(whole_table, ["a", "b"], [0], [1], num_images=1, ignored_pixels=0).miou == pytest.approx(whole)
        assert result is not None and result.miou == pytest.approx(near)
        assert result.width == 1 and result.pixels == 16
        assert (result.base_miou, result.novel_miou) == ((0.0, 50.0) if prediction is shifted else (100.0, 100.0))
    assert BoundaryConfusion(2, 255, width=1).result(["a", "b"], [0], [1]) is None  # no edge seen
