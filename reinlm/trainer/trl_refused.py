"""TRL ``GRPOConfig`` / ``TrainingArguments`` keys that reinlm refuses, each with the reason that applies to it.

Part of the one table of TRL names (:mod:`reinlm.trainer.trl_names`): a key here is refused with its reason
("KEY has no meaning in reinlm: REASON") instead of "unknown key". ``tests/test_trl_coverage.py`` enumerates
``dataclasses.fields(trl.GRPOConfig)`` of the installed TRL and fails on any field that is neither implemented
(a TrainConfig field, a rename or a derived key) nor listed here with a reason of its own.
"""

from __future__ import annotations

_OFFLINE = "reinlm never uploads (it runs offline; HF_HUB_OFFLINE is honoured); the model stays in OUT/final"
_ONE_PROCESS_VLLM = "reinlm runs vLLM in the training process on one device (TRL's colocate mode)"
_EVAL = ("reinlm has no periodic evaluation loop; it evaluates held-out prompts before and after training "
         "(eval_prompts, eval_samples)")

#: TRL key -> why it has no meaning in reinlm
TRL_UNSUPPORTED: dict[str, str] = {
    # ---------------------------------------------------------------- the Hub and other network services
    "push_to_hub": f"{_OFFLINE}.",
    "hub_model_id": f"{_OFFLINE}; no repository id is needed.",
    "hub_token": f"{_OFFLINE}; no token is read (and a token in a config file would be written to config.yaml).",
    "hub_private_repo": f"{_OFFLINE}; there is no repository to make private.",
    "hub_strategy": f"{_OFFLINE}; checkpoints go to OUT/checkpoints.",
    "hub_always_push": f"{_OFFLINE}; nothing is pushed.",
    "hub_revision": f"{_OFFLINE}; there is no branch to push to.",
    "log_completions_hub_repo": f"{_OFFLINE}; completions go to OUT/samples.jsonl.",
    "project": "Trackio logging is not available (no network); use report_to: tensorboard or wandb.",
    "trackio_space_id": "Trackio logging is not available (it needs a Hugging Face Space over the network).",
    "trackio_bucket_id": "Trackio logging is not available (it needs a Hugging Face bucket over the network).",
    "trackio_static_space_id": "Trackio logging is not available (it needs a Hugging Face Space over the network).",
    "vllm_server_base_url": f"{_ONE_PROCESS_VLLM}; there is no vLLM server to reach.",
    "vllm_server_host": f"{_ONE_PROCESS_VLLM}; there is no vLLM server host.",
    "vllm_server_port": f"{_ONE_PROCESS_VLLM}; there is no vLLM server port.",
    "vllm_server_timeout": f"{_ONE_PROCESS_VLLM}; nothing waits for a server.",
    "vllm_group_port": f"{_ONE_PROCESS_VLLM}; weights are copied in memory, not over a NCCL group port.",
    # ---------------------------------------------------------------- vLLM engine settings
    "vllm_gpu_memory_utilization": "reinlm's vLLM backend reserves vllm_kv_cache_mb of KV cache instead of a share "
                                   "of GPU memory; use vllm_kv_cache_mb.",
    "vllm_tensor_parallel_size": f"{_ONE_PROCESS_VLLM}; use torchrun for data parallel.",
    "vllm_model_impl": "reinlm's vLLM backend always uses vLLM's own model implementation.",
    "vllm_enable_sleep_mode": "reinlm's vLLM backend stays resident between rollouts (no sleep/wake offload).",
    "vllm_structured_outputs_regex": "structured (regex-constrained) outputs are not implemented in either "
                                     "generation backend.",
    "vllm_max_model_length": "reinlm sizes vLLM's context from the longest prompt plus max_completion_length.",
    # ---------------------------------------------------------------- generation
    "cache_implementation": "reinlm's generation manages its own KV cache (static per rollout); there is no "
                            "cache implementation to choose.",
    "use_transformers_continuous_batching": "reinlm's generation backend batches a rollout itself; choose "
                                            "generation_backend: reinlm or vllm.",
    "transformers_continuous_batching_config": "reinlm does not use transformers' continuous batching engine.",
    "use_transformers_paged": "TRL's deprecated name of use_transformers_continuous_batching, which reinlm does not "
                              "use.",
    "pad_to_multiple_of": "reinlm pads each rollout to its longest sequence; there is no padding multiple to set.",
    "max_prompt_length": "prompts are never truncated; over-long prompts are refused before training.",
    # ---------------------------------------------------------------- options not implemented yet
    "log_unique_prompts": "samples.jsonl records each logged completion with its prompt.",
    "log_multimodal": "reinlm trains text-only models; there is no multimodal content to log.",
    "cast_lm_head_to_fp32": "the LM head computes in the training precision (train_precision); no separate "
                            "float32 head cast.",
    "router_aux_loss_coef": "reinlm trains dense models; there is no Mixture-of-Experts load-balancing loss.",
    # ---------------------------------------------------------------- schedule and optimiser
    "num_train_epochs": "reinlm counts rollout steps, not dataset epochs; give max_steps (or steps).",
    "lr_scheduler_kwargs": "lr_schedule takes constant, linear or cosine without options.",
    "optim_args": "the optimiser is AdamW with lr and weight_decay; there are no optimiser arguments to pass.",
    "optim_target_modules": "the optimiser is AdamW over every trainable parameter (GaLore-style targets do not "
                            "apply).",
    "label_smoothing_factor": "label smoothing applies to supervised cross-entropy; the RL loss has no labels.",
    "neftune_noise_alpha": "NEFTune embedding noise is a supervised fine-tuning method; not used in RL.",
    "auto_find_batch_size": "batch sizes are fixed by batch_prompts x samples_per_prompt and minibatch_size.",
    "average_tokens_across_devices": "the dapo/cispo losses always normalise by the tokens of the whole step "
                                     "across processes (TRL's true).",
    "torch_empty_cache_steps": "reinlm does not empty the CUDA cache periodically.",
    "gradient_checkpointing_kwargs": "gradient checkpointing is not implemented (gradient_checkpointing: false).",
    "use_cache": "the training forward never uses a KV cache; generation always does.",
    # ---------------------------------------------------------------- precision and compilation
    "tf32": "TF32 matrix products are not configured by reinlm; use train_precision: bf16-autocast for mixed "
            "precision.",
    "bf16_full_eval": "the held-out evaluation runs in the policy's dtype; there is no separate evaluation precision.",
    "fp16_full_eval": "reinlm has no fp16 mode; the held-out evaluation runs in the policy's dtype.",
    "torch_compile": "the training forward is not compiled with torch.compile.",
    "torch_compile_backend": "the training forward is not compiled with torch.compile.",
    "torch_compile_mode": "the training forward is not compiled with torch.compile.",
    "use_liger_kernel": "Liger kernels are not used; the loss computes log-probs with plain torch.",
    "liger_kernel_config": "Liger kernels are not used (use_liger_kernel).",
    # ---------------------------------------------------------------- logging
    "logging_steps": "reinlm logs every step to metrics.jsonl; remove the key.",
    "logging_strategy": "reinlm logs every step to metrics.jsonl; remove the key.",
    "logging_first_step": "reinlm logs every step, the first included, to metrics.jsonl.",
    "logging_nan_inf_filter": "a NaN or inf loss stops the run with the step named; nothing is filtered.",
    "logging_dir": "TensorBoard logs go to OUT/tb; remove the key.",
    "log_on_each_node": "only the main process logs (metrics are all-reduced first).",
    "log_level": "reinlm prints progress and warnings itself; use progress: false for plain lines.",
    "log_level_replica": "only the main process prints.",
    "disable_tqdm": "use progress: false for plain progress lines instead of bars.",
    "include_num_input_tokens_seen": "reinlm logs the completion tokens of each step (response/length); the input "
                                     "token count is not tracked.",
    "skip_memory_metrics": "reinlm logs no per-stage memory metrics.",
    "run_name": "the run is named by its directory (out).",
    # ---------------------------------------------------------------- evaluation
    "eval_steps": f"{_EVAL}.",
    "eval_delay": f"{_EVAL}.",
    "eval_on_start": f"{_EVAL}; the 'before' evaluation always runs at start.",
    "eval_accumulation_steps": f"{_EVAL}; there are no eval predictions to accumulate.",
    "eval_do_concat_batches": f"{_EVAL}; there are no eval predictions to concatenate.",
    "eval_use_gather_object": f"{_EVAL}; there are no eval objects to gather.",
    "per_device_eval_batch_size": "the held-out evaluation uses eval_prompts x eval_samples; remove the key.",
    "prediction_loss_only": "reinlm computes no evaluation loss; the held-out evaluation reports rewards.",
    "include_for_metrics": "there is no compute_metrics hook; the held-out evaluation reports rewards, distinct-2, "
                           "KL and perplexity.",
    "batch_eval_metrics": "there is no compute_metrics hook.",
    "load_best_model_at_end": "OUT/final is the model after the last step (checkpoints keep earlier ones); there "
                              "is no eval metric to pick the best.",
    "metric_for_best_model": "no best model is selected (load_best_model_at_end).",
    "greater_is_better": "no best model is selected (load_best_model_at_end).",
    "do_train": "reinlm train always trains.",
    "do_eval": f"{_EVAL}.",
    "do_predict": "reinlm train does not predict on a test set; use reinlm eval.",
    # ---------------------------------------------------------------- checkpoints and resume
    "save_only_model": "checkpoints always hold the optimiser and RNG state so that a resume reproduces the run.",
    "save_on_each_node": "only the main process writes checkpoints.",
    "enable_jit_checkpoint": "checkpoints are written every save_every steps and at the end; none on SIGTERM.",
    "resume_from_checkpoint": "resume with reinlm train --resume RUN_DIR (or trainer.train(resume=True)).",
    "ignore_data_skip": "a resume continues the seeded prompt draws exactly; there are no batches to skip.",
    "restore_callback_states_from_checkpoint": "reinlm has no trainer callbacks.",
    # ---------------------------------------------------------------- data loading
    "remove_unused_columns": "every dataset column reaches the reward functions; remove the key.",
    "dataloader_num_workers": "prompts are held in memory; remove the key.",
    "dataloader_drop_last": "prompts are held in memory and drawn per step; there is no dataloader.",
    "dataloader_pin_memory": "prompts are held in memory and drawn per step; there is no dataloader.",
    "dataloader_persistent_workers": "prompts are held in memory; there are no dataloader workers.",
    "dataloader_prefetch_factor": "prompts are held in memory; there are no dataloader workers.",
    "dataloader_multiprocessing_context": "prompts are held in memory; there are no dataloader workers.",
    "dataloader_in_order": "prompts are held in memory and drawn per step; there is no dataloader.",
    "label_names": "the RL loss has no labels.",
    "train_sampling_strategy": "each step draws a seeded random set of prompts (TRL's random).",
    "length_column_name": "there is no group-by-length sampling.",
    "data_seed": "prompt draws follow seed; there is no separate data seed.",
    "full_determinism": "runs are seeded (seed) and resume to the same result; torch's deterministic algorithms "
                        "are not switched on.",
    # ---------------------------------------------------------------- distribution
    "deepspeed": "not supported; reinlm runs one process or torchrun/accelerate data parallel.",
    "ds3_gather_for_generation": "DeepSpeed ZeRO-3 is not supported (deepspeed).",
    "fsdp": "use sharding: fsdp (FSDP2, full shard of parameters, gradients and AdamW state) under torchrun / "
            "accelerate launch; TRL's auto-wrap strings are not read.",
    "fsdp_config": "reinlm configures FSDP itself (sharding: fsdp: one unit per decoder layer, full shard).",
    "accelerator_config": "reinlm configures Accelerate itself for data parallel (torchrun / accelerate launch).",
    "parallelism_config": "only data parallel is supported (torchrun / accelerate launch).",
    "ddp_find_unused_parameters": "data parallel averages gradients with an all-reduce of its own, not DDP.",
    "ddp_bucket_cap_mb": "data parallel averages gradients with an all-reduce of its own, not DDP.",
    "ddp_broadcast_buffers": "data parallel averages gradients with an all-reduce of its own, not DDP.",
    "ddp_static_graph": "data parallel averages gradients with an all-reduce of its own, not DDP.",
    "ddp_backend": "the process group backend is chosen by torchrun (gloo on CPU, nccl on GPU).",
    "ddp_timeout": "the process group uses torch's default timeout.",
    "local_rank": "set by torchrun in the environment (LOCAL_RANK), not in the config.",
    "debug": "transformers' debug modes (underflow_overflow, tpu_metrics_debug) do not apply; NaN losses stop the "
             "run by themselves.",
    # ---------------------------------------------------------------- model loading
    "model_init_kwargs": "models load in dtype (--dtype) on device (--device); remove the key.",
    "torch_dtype": "use dtype: float32 or bfloat16.",
    "trust_remote_code": "reinlm loads only standard architectures; remove the key.",
    "attn_implementation": "reinlm uses the model's default attention; remove the key.",
}
