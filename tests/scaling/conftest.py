"""The scaling tests share the training tests' synthetic dataset."""
from tests.train.conftest import synthetic_data  # noqa: F401  (a fixture, used by name)
