"""FSDP for token-space training (``--sharding fsdp``): parameters, gradients and AdamW state sharded across
processes with torch's FSDP2 (``torch.distributed.fsdp.fully_shard``), and the collective gathers that saving,
loading and the rollout copy need.

FSDP2 shards every parameter along dim 0 into a ``DTensor`` (each process holds 1/N of the rows); a forward
all-gathers one decoder layer at a time and frees it afterwards, the backward reduce-scatters the gradients
(averaged over processes, as data parallel averages them). Every function here that gathers or scatters is
**collective**: all processes must call it at the same point, in the same order (the trainer does; a call on
the main process alone would hang).
"""

from __future__ import annotations

import os
from typing import Any, Iterable

import torch


def shard_model(model: torch.nn.Module) -> torch.nn.Module:
    """Shard ``model`` in place with FSDP2: each decoder layer (the classes a Hugging Face model names in
    ``_no_split_modules``) is its own unit, the root (embeddings, final norm, LM head) the last one.

    The default device mesh spans every process of the default process group (gloo on the CPU, NCCL on GPUs).
    """
    from torch.distributed.fsdp import fully_shard

    layer_classes = set(getattr(model, "_no_split_modules", None) or [])
    for module in model.modules():
        if type(module).__name__ in layer_classes:
            fully_shard(module)
    fully_shard(model)
    return model


def accelerate_fsdp(accelerator: Any) -> bool:
    """Whether the processes were started by ``accelerate launch`` with an FSDP config (``--use_fsdp`` or
    ``distributed_type: FSDP``): the launcher sets ``ACCELERATE_USE_FSDP``, which Accelerate itself acts on only
    on GPUs (on the CPU its state stays MULTI_CPU), so both are read."""
    return (os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
            or getattr(accelerator, "distributed_type", None) == "FSDP")  # a str enum


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor (collective: an all-gather), or ``t`` itself."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This process's shard of a DTensor (no communication), or ``t`` itself."""
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def full_model_state(model: torch.nn.Module) -> dict[str, Any]:
    """The whole state dict of a sharded ``model`` on the CPU of process 0 (empty elsewhere). Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_model_state(model: torch.nn.Module, state: dict[str, Any]) -> None:
    """Load a whole state dict (read by every process) into a sharded ``model``: each keeps its shard.
    Tied weights may be absent from ``state`` (``strict=False``). Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=False))


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The whole optimiser state (keyed by parameter names) on the CPU of process 0 (empty elsewhere). Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                              state: dict[str, Any]) -> None:
    """Load a whole optimiser state written by :func:`full_optimizer_state` (read by every process). Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, optim_state_dict=state,
                             options=StateDictOptions(full_state_dict=True))


def train_state_bytes(params: Iterable[torch.nn.Parameter], optimizer: torch.optim.Optimizer) -> int:
    """Bytes this process holds for the trained parameters, their gradients and the optimiser's state (local
    shards under FSDP; everything in one process or under DDP). No communication."""
    params = list(params)
    total = 0
    for p in params:
        total += local_tensor(p.detach()).nbytes
        if p.grad is not None:
            total += local_tensor(p.grad).nbytes
        for v in optimizer.state.get(p, {}).values():
            if isinstance(v, torch.Tensor) and v.dim() > 0:  # the moments (the step counter is a scalar)
                total += local_tensor(v).nbytes
    return total
