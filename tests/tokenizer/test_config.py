"""tokenizer/config.py: TokenizerConfig from a saved run's dict; TokenizerOverride builds only when given."""

from megatron_tf.tokenizer.config import TokenizerConfig, TokenizerOverride


def test_from_dict_ignores_keys_it_does_not_know():
    d = {"tokenizer_type": "NullTokenizer", "tokenizer_model": None, "vocab_size": 103, "from_a_later_version": 1}
    assert TokenizerConfig.from_dict(d) == TokenizerConfig("NullTokenizer", None, 103)
    assert TokenizerConfig.from_dict({}) == TokenizerConfig()


def test_override_builds_only_when_a_type_is_given():
    assert TokenizerOverride().build() is None
    tok = TokenizerOverride("NullTokenizer", vocab_size=103).build()
    assert tok.vocab_size == 103 and tok.tokenize("5 17") == [5, 17]
