import pytest

from tests.labeling.tiny_tokenizers import train_hf_bytelevel, train_sp


@pytest.fixture(scope="session")
def sp_tok(tmp_path_factory):
    return train_sp(str(tmp_path_factory.mktemp("sp")))


@pytest.fixture(scope="session")
def hf_tok(tmp_path_factory):
    return train_hf_bytelevel(str(tmp_path_factory.mktemp("hf")))
