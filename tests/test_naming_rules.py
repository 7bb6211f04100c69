"""The consistent group naming of benchmarks/naming_rules.py, on hand-built image labels (the
image-count evidence it shares with ``pseudolabel --among groups``: test_groups.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from conftest import two_class_groups

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


def test_the_consistent_naming_matches_each_image_label(rules) -> None:
    mass, present = two_class_groups()
    naming = rules.consistent_naming(rules.appearances(mass[:2], 0.02), present)
    assert naming.tolist() == [0, 1]


def test_the_step_by_step_search_finds_the_same_naming_when_there_are_too_many_to_try(rules, monkeypatch) -> None:
    mass, present = two_class_groups()
    monkeypatch.setattr(rules, "MAX_NAMINGS", 1)
    assert rules.consistent_naming(rules.appearances(mass[:2], 0.02), present).tolist() == [0, 1]
