"""top_entropy_quantile over every process's tokens, as TRL's get_high_entropy_mask takes it: against TRL's own
method with a two-process accelerator stand-in, and the gather itself on 2 real gloo processes."""

from __future__ import annotations

import os
import socket
from types import SimpleNamespace

import torch
import torch.multiprocessing as mp

from reinlm.algorithms.token_selection import high_entropy_mask
from reinlm.utils.distributed import gather_values


def test_mask_equals_trls_with_another_process_s_tokens():
    from trl.trainer.grpo_trainer import GRPOTrainer

    g = torch.Generator().manual_seed(0)
    mine, theirs = torch.rand(3, 5, generator=g) * 2, torch.rand(12, generator=g) * 4  # the other rank: higher
    mask = torch.ones(3, 5, dtype=torch.long)
    mask[0, 3:] = 0

    class TwoRanks:  # TRL's accelerator: pad to the longest rank with its sentinel, gather in rank order
        def pad_across_processes(self, t, dim=0, pad_index=0):
            return torch.cat([t, t.new_full((max(len(theirs) - len(t), 0),), pad_index)])

        def gather(self, t):
            other = torch.cat([theirs, theirs.new_full((max(len(t) - len(theirs), 0),), -1e9)])
            return torch.cat([t, other])

    stub = SimpleNamespace(accelerator=TwoRanks())
    for q in (0.2, 0.5, 0.8):
        want = GRPOTrainer.get_high_entropy_mask(stub, mine, mask, 1 - q)
        got = high_entropy_mask(mine, mask, q, gather=lambda v: torch.cat([v, theirs]))
        assert torch.equal(got, want)
    local_only = high_entropy_mask(mine, mask, 0.5, gather=lambda v: v)
    assert not torch.equal(high_entropy_mask(mine, mask, 0.5, gather=lambda v: torch.cat([v, theirs])), local_only)
    assert torch.equal(high_entropy_mask(mine, mask, 0.5), local_only)  # one process: nothing to gather


def _worker(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        values = torch.arange(3.0) if rank == 0 else torch.arange(10.0, 15.0)  # different lengths
        out[rank] = gather_values(values).tolist()
        # the default gather: the threshold is the union's median 10.5 (alone each rank would take 1 and 12)
        out[f"mask{rank}"] = high_entropy_mask(values[None], torch.ones(1, len(values)), 0.5).tolist()
    finally:
        torch.distributed.destroy_process_group()


def test_gather_values_on_two_gloo_processes():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(port, out), nprocs=2, join=True)
        want = [0.0, 1.0, 2.0, 10.0, 11.0, 12.0, 13.0, 14.0]
        assert out[0] == want and out[1] == want
        assert out["mask0"] == [[False] * 3] and out["mask1"] == [[False] + [True] * 4]
