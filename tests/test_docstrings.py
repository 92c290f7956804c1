"""The worked examples in the core's docstrings are run, so they cannot drift from the code."""

import doctest
import importlib

import pytest

CORE = ["buckets", "config", "recipes", "report", "schedule", "tokens"]


@pytest.mark.parametrize("name", CORE)
def test_docstring_examples_hold(name):
    module = importlib.import_module(f"growlength.{name}")
    result = doctest.testmod(module)
    assert result.failed == 0
    assert result.attempted > 0, f"growlength.{name} has no example left to run"
