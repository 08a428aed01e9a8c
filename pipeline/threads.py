"""Torch's CPU thread count for one block of work.

Curation and shard workers already run one per core (Ray), so a model inside one runs on the threads
its stage asks for (`scenes.transnet_threads`, `identity.threads`, 1 for the VAE fit) and the
process's own setting comes back afterwards, whatever the block raised.
"""
from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def torch_threads(n: int):
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(prev)
