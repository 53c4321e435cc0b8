"""Shared fixtures: the tiny real model (stories260K), real medical text and a store of it."""

import sys
from pathlib import Path

import pytest
import torch

import saelab
from saelab.paths import shared_dir

sys.path.insert(0, str(Path(__file__).parent))  # tests/synthetic.py

HOOK = "resid_post.2"  # stories260K has 5 blocks of width 64


def pytest_configure(config):
    torch.set_num_threads(2)
    if shared_dir() is None:
        raise pytest.UsageError(
            "tests need the offline fixtures: set SAELAB_SHARED to the shared/ folder"
        )


@pytest.fixture(scope="session")
def stories():
    return saelab.load_model("stories260k", device="cpu")


@pytest.fixture(scope="session")
def medical_texts():
    return saelab.load_corpus("medical", split="train", max_texts=400)


@pytest.fixture(scope="session")
def medical_store(stories, medical_texts):
    """stories260K `resid_post.2` on ~2k tokens of medical text (64-token contexts)."""
    return saelab.harvest(stories, HOOK, medical_texts, max_tokens=2048, ctx_len=64, progress=False)


@pytest.fixture(scope="session")
def medical_tokens(stories, medical_texts):
    """Packed medical token ids `[8, 64]`."""
    return saelab.pack(stories.tokenizer, medical_texts, ctx_len=64, max_tokens=512)
