"""The module-scoped fixtures the FeatureExplorer tests share: a TopK SAE over stories260K's
medical store and an explorer on it (tests/feature_explorer_helpers.py says how each is made)."""

import pytest
from feature_explorer_helpers import explorer_sae, make_explorer


@pytest.fixture(scope="module")
def store(medical_store):
    return medical_store


@pytest.fixture(scope="module")
def sae():
    return explorer_sae()


@pytest.fixture(scope="module")
def explorer(sae, stories, store):
    return make_explorer(sae, stories, store)
