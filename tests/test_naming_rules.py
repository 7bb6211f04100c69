"""The group-naming arithmetic of benchmarks/naming_rules.py, on hand-built image labels."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def rules():
    spec = importlib.util.spec_from_file_location("naming_rules_benchmark", BENCHMARKS / "naming_rules.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def two_classes():
    """Eight images: class 0 in the first six, class 1 in images 2-7. Group 0 covers class 0's
    pixels, group 1 class 1's, group 2 is everywhere."""
    present = np.zeros((8, 2), dtype=bool)
    present[:6, 0] = True
    present[2:, 1] = True
    mass = np.zeros((3, 8))
    mass[0, :6] = 50
    mass[1, 2:] = 50
    mass[2, :] = 50
    return mass, present


def test_a_group_never_seen_without_its_class_has_evidence_for_it_and_one_seen_everywhere_against(rules) -> None:
    mass, present = two_classes()
    evidence = rules.group_evidence(rules.appearances(mass, 0.02), present)
    assert evidence[0, 0] > 0 and evidence[1, 1] > 0
    assert evidence[0, 1] < 0 and evidence[1, 0] < 0  # seen in images lacking the other class
    assert evidence[2, 0] < 0 and evidence[2, 1] < 0  # seen in every image, whatever the label


def test_the_consistent_naming_matches_each_image_label(rules) -> None:
    mass, present = two_classes()
    naming = rules.consistent_naming(rules.appearances(mass[:2], 0.02), present)
    assert naming.tolist() == [0, 1]


def test_the_step_by_step_search_finds_the_same_naming_when_there_are_too_many_to_try(rules, monkeypatch) -> None:
    mass, present = two_classes()
    monkeypatch.setattr(rules, "MAX_NAMINGS", 1)
    assert rules.consistent_naming(rules.appearances(mass[:2], 0.02), present).tolist() == [0, 1]


def test_a_group_below_the_appearance_share_does_not_count_as_seen(rules) -> None:
    mass, present = two_classes()
    mass[0, 6:] = 1  # a stray pixel or two of group 0 in the images without class 0
    strict = rules.group_evidence(rules.appearances(mass, 0.02), present)
    loose = rules.group_evidence(rules.appearances(mass, 0.005), present)
    assert strict[0, 0] > 0 > loose[0, 0]
