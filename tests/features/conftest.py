"""The module-scoped fixtures the saelab.features tests share: a random TopK SAE over
stories260K's medical store, its dense codes and merged statistics (tests/feature_helpers.py
says how each is made)."""

import pytest
from feature_helpers import dense_codes, merged_stats, topk_sae


@pytest.fixture(scope="module")
def store(medical_store):
    return medical_store


@pytest.fixture(scope="module")
def sae():
    return topk_sae()


@pytest.fixture(scope="module")
def dense(sae, store):
    return dense_codes(sae, store)


@pytest.fixture(scope="module")
def stats(sae, store):
    return merged_stats(sae, store)
