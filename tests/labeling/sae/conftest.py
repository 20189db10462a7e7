import pytest

from tests.labeling.sae.tiny_models import save_model


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory):
    return save_model(str(tmp_path_factory.mktemp("llama")), "llama")


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory):
    return save_model(str(tmp_path_factory.mktemp("gpt2")), "gpt2")
