"""Shared fixtures: the tiny real model (stories260K) and real medical text."""

import pytest
import torch

import saelab
from saelab.paths import shared_dir


def pytest_configure(config):
    torch.set_num_threads(2)
    if shared_dir() is None:
        raise pytest.UsageError("tests need the offline fixtures: set SAELAB_SHARED to the shared/ folder")


@pytest.fixture(scope="session")
def stories():
    return saelab.load_model("stories260k", device="cpu")


@pytest.fixture(scope="session")
def medical_texts():
    return saelab.load_corpus("medical", split="train", max_texts=400)
