"""reinlm.rollout: token-space generation (``token``) -> :class:`RolloutBatch`."""

from reinlm.rollout.token import (RolloutBatch, SamplingConfig, generate_rollouts, sequence_logprobs,
                                  token_char_spans, token_logprobs)

__all__ = ["RolloutBatch", "SamplingConfig", "generate_rollouts", "sequence_logprobs", "token_char_spans",
           "token_logprobs"]
