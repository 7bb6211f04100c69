"""Naming by elimination: the term on hand-built similarities and scores, the memory ring, and the
criterion filling the memory of the classes an image lacks."""

from __future__ import annotations

import math

import pytest
import torch

from simformer_cli.model.criterion import SetCriterion
from simformer_cli.model.elimination import MIN_MEMORY, EliminationMemory, elimination_terms
from simformer_cli.settings.model import LossSettings

from test_model_criterion import NOVEL, NUM_CLASSES, _hand_outputs, weak_targets


def test_the_most_alike_points_are_pushed_off_the_class_and_the_least_alike_towards_it():
    similarity = torch.tensor([[0.9, 0.8, 0.1, 0.0], [math.nan] * 4])  # class 1's memory is not ready
    scores = torch.tensor([[0.5, 0.2, 0.6, 0.3], [0.5, 0.5, 0.2, 0.1]], requires_grad=True)
    present = torch.tensor([True, True])
    term = elimination_terms(similarity, scores, present, share=0.5)
    alike = -(math.log(0.5) + math.log(0.8)) / 2  # points 0 and 1: -log(1 - S)
    unlike = -(math.log(0.6 / 0.8) + math.log(0.3 / 0.4)) / 2  # points 2 and 3: class 0 among the present ones
    assert term.item() == pytest.approx(alike + unlike, rel=1e-5)
    term.backward()
    assert scores.grad[0, 0] > 0 and scores.grad[0, 2] < 0  # alike: down; unlike: up
    # Absent classes and classes whose memory is not ready give no term, but a graph.
    nothing = elimination_terms(similarity, scores, torch.tensor([False, True]), share=0.5)
    assert nothing.item() == 0.0 and nothing.requires_grad


def test_the_naming_share_sets_how_many_least_alike_points_are_pushed_towards_the_class():
    similarity = torch.tensor([[0.9, 0.8, 0.1, 0.0], [math.nan] * 4])
    scores = torch.tensor([[0.5, 0.2, 0.6, 0.3], [0.5, 0.5, 0.2, 0.1]])
    present = torch.tensor([True, True])
    alike = -(math.log(0.5) + math.log(0.8)) / 2
    only_least = elimination_terms(similarity, scores, present, share=0.5, naming_share=0.25)
    assert only_least.item() == pytest.approx(alike - math.log(0.3 / 0.4), rel=1e-5)  # point 3 alone
    assert elimination_terms(similarity, scores, present, share=0.5, naming_share=0.0).item() == pytest.approx(alike)
    assert elimination_terms(similarity, scores, present, share=0.5, naming_share=0.5).item() == pytest.approx(
        elimination_terms(similarity, scores, present, share=0.5).item())


def test_memory_is_a_ring_per_class_that_answers_once_it_holds_enough():
    memory = EliminationMemory(classes=2, size=MIN_MEMORY + 4, dim=2)
    east = torch.tensor([[1.0, 0.0]]).repeat(MIN_MEMORY - 1, 1)
    memory.add(0, east)
    assert memory.similarity(torch.tensor([[1.0, 0.0]])).isnan().all()  # too few entries
    memory.add(0, torch.tensor([[0.0, 1.0]]).repeat(5, 1))  # 68 entries: full, the next write wraps
    assert int(memory.filled[0]) == MIN_MEMORY + 4 and int(memory.next[0]) == 0 and int(memory.filled[1]) == 0
    similarity = memory.similarity(torch.tensor([[0.0, 1.0], [-1.0, 0.0]]))
    assert similarity[0].tolist() == [1.0, 0.0] and similarity[1].isnan().all()
    memory.add(0, torch.tensor([[0.6, 0.8]]))
    assert memory.features[0, 0].tolist() == pytest.approx([0.6, 0.8])  # the oldest entry went first


def test_criterion_fills_the_memories_of_absent_classes_and_checkpoints_them():
    settings = LossSettings(similarity=False, distillation=False, elimination=True, elimination_points=MIN_MEMORY)
    criterion = SetCriterion(num_classes=NUM_CLASSES, mask_dim=8, novel_classes=NOVEL, settings=settings)
    outputs = _hand_outputs(size=8)
    outputs["pred_masks"].requires_grad_(True)
    targets = [weak_targets(0, 16, [4], pad_columns=4), weak_targets(1, 16, [5], pad_columns=4)]
    first = criterion(outputs, targets, torch.Generator().manual_seed(0))
    assert first["loss_elim"].item() == 0.0  # empty memories: nothing to compare with yet
    # Image 0 lacks class 5, image 1 lacks class 4: each filled the other class's memory.
    assert criterion.elimination.filled.tolist() == [MIN_MEMORY, MIN_MEMORY]
    second = criterion(outputs, targets, torch.Generator().manual_seed(1))
    assert second["loss_elim"].item() > 0 and second["loss_elim"].requires_grad
    assert {"elimination.features", "elimination.filled", "elimination.next"} <= set(criterion.state_dict())
    plain = SetCriterion(num_classes=NUM_CLASSES, mask_dim=8, novel_classes=NOVEL,
                         settings=LossSettings(similarity=False, distillation=False))
    assert not any(key.startswith("elimination") for key in plain.state_dict())
