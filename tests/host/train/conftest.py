"""Fixtures for the training tests (helpers in train_helpers.py)."""

import pytest
from train_helpers import write_tiny_recipe


@pytest.fixture
def tiny_recipe_path(tmp_path):
    return write_tiny_recipe(tmp_path / "recipes")
