"""Token labelers (blocklist; the classifier and SAE labelers implement the same `TokenLabeler` protocol) and the
annotation runner that writes their scores to forget sidecars beside a dataset."""

from .blocklist import BlocklistLabeler
from .labeler import TokenLabeler
from .token_text import TokenBytes

__all__ = ["BlocklistLabeler", "TokenBytes", "TokenLabeler"]
