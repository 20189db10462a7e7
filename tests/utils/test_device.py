from unittest import mock

import torch

from megatron_tf.utils.device import resolve_device


def test_auto_follows_cuda_availability():
    with mock.patch.object(torch.cuda, "is_available", return_value=False):
        assert resolve_device("auto") == "cpu"
    with mock.patch.object(torch.cuda, "is_available", return_value=True):
        assert resolve_device("auto") == "cuda"


def test_explicit_names_pass_through():
    for name in ("cpu", "cuda", "cuda:1"):
        assert resolve_device(name) == name
