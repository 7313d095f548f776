"""Key/value caches kept across an episode's turns (DESIGN.md 5b: the driver "appends observation ids to each
episode's cache").

The multi-turn driver (:func:`reinlm.rollout.multiturn.run_episodes`) decodes every turn through the one decode
loop, :func:`reinlm.rollout.decode.decode`. Without a kept cache, each turn re-prefills the whole transcript so
far (its cost grows with every turn; on SmolLM2-135M it held multi-turn decoding at 0.41x single-turn tokens/s).
With one, each episode's keys and values stay in :class:`KeptCaches` between turns, and a turn prefills only
the ids the cache does not hold yet: the previous turn's last sampled token (the decode loop never feeds the
last token of a row) and the environment's observation.

Layout of one turn's batch (b live episodes; L = longest kept cache, T = longest new segment, S = tokens per
turn; nkv / hs = key-value heads / head size):

- columns ``[0, L)``: each episode's kept keys/values, left-padded to L;
- columns ``[L, L + T)``: its new ids, left-padded to T;
- then the S decode slots.

Padding inside a row is masked out of the attention, and rotary positions count real tokens only (the kept
length + the index among the new real ids), so every real token sees the keys, values and position it would
see in the re-prefilled transcript. When a row stops (or the turn ends) the stepper gathers its real columns
back into compact per-episode tensors, (nkv, L_e, hs) per layer, in the model's dtype (the fused decoder's
float32 buffers hold values written from that dtype, so the conversion is exact).

In float32 the kept path samples the same tokens as re-prefilling, token for token, at a fixed seed (tested
against the re-prefill path, which stays available as ``run_episodes(..., reprefill=True)``); only the
blocking of the matrix products differs between the two. Models whose cache is not one full-attention
``DynamicLayer`` per layer (sliding windows, hybrid or state-space caches) keep re-prefilling
(:func:`kept_cache_supported`).
"""

from __future__ import annotations

from typing import Any

import torch

from reinlm.rollout.decode import LMStepper, position_ids_from_mask
from reinlm.rollout.sampling import Chooser

__all__ = ["KeptCaches", "TurnStepper", "kept_cache_supported"]


def kept_cache_supported(model: Any) -> bool:
    """Whether ``model``'s cache can be kept across turns: every layer attends to the full context."""
    conf = getattr(model, "config", None)
    if conf is None:
        return False
    text = conf.get_text_config(decoder=True) if hasattr(conf, "get_text_config") else conf
    types = getattr(text, "layer_types", None)
    if types is not None and any(t != "full_attention" for t in types):
        return False
    if getattr(text, "sliding_window", None) and getattr(text, "use_sliding_window", True) and \
            getattr(text, "model_type", None) != "llama":
        return False
    return True


class KeptCaches:
    """Each episode's keys and values between turns: ``ids[e]`` the token ids its cache holds, in order, and
    ``kv[e]`` one ``(keys, values)`` pair per layer, each (nkv, L_e, hs) with L_e = ``len(ids[e])``."""

    def __init__(self) -> None:
        self.ids: dict[int, list[int]] = {}
        self.kv: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def held(self, e: int) -> list[int]:
        """The ids episode ``e``'s cache holds (empty before its first turn)."""
        return self.ids.get(e, [])

    def put(self, e: int, ids: list[int], kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.ids[e], self.kv[e] = ids, kv

    def drop(self, e: int) -> None:
        """Forget episode ``e`` (it ended)."""
        self.ids.pop(e, None)
        self.kv.pop(e, None)

    def stack(self, episodes: list[int], device: torch.device | str
              ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]] | None, torch.Tensor, torch.Tensor]:
        """The kept caches of ``episodes`` (b of them) as one left-padded batch.

        Returns (per layer ``(keys, values)`` each (b, nkv, L, hs), or None when no episode holds anything;
        the key mask (b, L) long, 1 on kept positions; the kept lengths (b,) long).
        """
        lengths = torch.tensor([len(self.held(e)) for e in episodes], dtype=torch.long, device=device)
        L = int(lengths.max()) if len(episodes) else 0
        mask = (torch.arange(L, device=device)[None, :] >= (L - lengths)[:, None]).long()  # (b, L)
        if L == 0:
            return None, mask, lengths
        ref = next(self.kv[e] for e in episodes if e in self.kv)
        layers = []
        for li, (k0, _) in enumerate(ref):
            nkv, hs = k0.shape[0], k0.shape[2]
            keys = k0.new_zeros(len(episodes), nkv, L, hs)
            values = torch.zeros_like(keys)
            for r, e in enumerate(episodes):
                n = int(lengths[r])
                if n:
                    k, v = self.kv[e][li]
                    keys[r, :, L - n:], values[r, :, L - n:] = k, v
            layers.append((keys, values))
        return layers, mask, lengths


class TurnStepper(LMStepper):
    """An :class:`~reinlm.rollout.decode.LMStepper` whose prefill continues each episode's kept cache and which
    hands every row's cache back to ``caches`` when the row stops or the turn ends (module docstring).

    Args:
        model, chooser, fused: as for ``LMStepper``.
        caches: the :class:`KeptCaches` of the episodes being played.
        episodes: the episode of each prompt row passed to :func:`~reinlm.rollout.decode.decode` (b,); rows
            are fed only the ids after ``caches.held(e)`` (one sample per row: ``samples_per_prompt=1``).
    """

    def __init__(self, model: Any, chooser: Chooser, caches: KeptCaches, episodes: list[int],
                 fused: bool = True) -> None:
        super().__init__(model, chooser, record_hidden=False, fused=fused)
        self.caches, self.episodes = caches, list(episodes)
        self.dtype = next(model.parameters()).dtype

    def past(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """-> (a ``DynamicCache`` of the kept keys/values or None, key mask (b, L + T), positions (b, T))."""
        from transformers import DynamicCache

        layers, kept_mask, lengths = self.caches.stack(self.episodes, ids.device)
        self.rows_ids = [self.caches.held(e) + row[m.bool()].tolist()
                         for e, row, m in zip(self.episodes, ids, mask)]  # ids each row's cache will hold
        self.active = torch.arange(ids.shape[0], device=ids.device)  # cache order -> prompt row
        self.n_fed = 0
        cache = None if layers is None else DynamicCache(ddp_cache_data=layers)
        pos = lengths[:, None] + position_ids_from_mask(mask)  # (b, T)
        return cache, torch.cat([kept_mask, mask.long()], dim=1), pos

    def _layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer (keys, values) of the rows in cache order: (b, nkv, >= filled, hs)."""
        if self.fused is not None:
            return list(zip(self.fused.k, self.fused.v))
        return [(layer.keys, layer.values) for layer in self.cache.layers]

    def _hand_back(self, positions: list[int]) -> None:
        """Gather the real columns of the rows at cache ``positions`` into ``caches`` (compact, model dtype)."""
        if not positions:
            return
        filled = self.P + self.n_fed
        layers = self._layers()
        for p in positions:
            row = int(self.active[p])
            cols = self.attn[p, :filled].bool()
            kv = [(k[p, :, :filled][:, cols].to(self.dtype), v[p, :, :filled][:, cols].to(self.dtype))
                  for k, v in layers]
            ids = self.rows_ids[row]
            assert len(ids) == int(cols.sum()), "kept cache and its ids disagree"
            self.caches.put(self.episodes[row], ids, kv)

    def feed(self, tok: torch.Tensor, rows: torch.Tensor, t: int) -> None:
        for p, token in enumerate(tok.tolist()):
            self.rows_ids[int(self.active[p])].append(token)
        self.n_fed += 1
        super().feed(tok, rows, t)

    def keep(self, idx: torch.Tensor) -> None:
        gone = torch.ones(self.active.numel(), dtype=torch.bool, device=idx.device)
        gone[idx] = False
        self._hand_back(gone.nonzero().squeeze(1).tolist())
        super().keep(idx)
        self.active = self.active[idx]

    def finish(self, R: int) -> dict[str, torch.Tensor]:
        self._hand_back(list(range(self.active.numel())))
        return super().finish(R)
