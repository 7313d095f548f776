"""The run around the steps: run directory, lock, resume, checkpoints, logging, the final model, held-out
evaluation before and after.

:func:`run` is :meth:`Trainer.train <reinlm.trainer.loop.Trainer.train>`: it holds the run-directory lock
(:mod:`reinlm.trainer.runlock`), evaluates on held-out prompts before anything is written, prepares a fresh
run directory or resumes from the newest complete checkpoint (:func:`resume`), calls ``train_step`` for each
step (logging metrics and samples, watching for degeneration, saving every ``--save-every`` steps), then saves
the final model and evaluates again. Files: docs/outputs.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Protocol

import torch
import yaml

from reinlm.algorithms.base import Algorithm
from reinlm.algorithms.controllers import AdaptiveKLController, ConstantKLController
from reinlm.config.build import config_to_dict
from reinlm.errors import ReinlmError
from reinlm.progress import note, step_bar, task
from reinlm.trainer.checkpoint import (checkpoint_dir, latest_checkpoint, load_trainer_state, load_value_head,
                                       save_checkpoint, share_identical_files)
from reinlm.trainer.config import TrainConfig
from reinlm.trainer.degeneration import DegenerationMonitor
from reinlm.trainer.guards import NonFiniteError, check_weights, stopped_message
from reinlm.trainer.inputs import check_resume_inputs, describe_inputs, write_inputs
from reinlm.trainer.logging import RunLogger, format_samples
from reinlm.trainer.policy import Policy
from reinlm.trainer.runlock import RunLock
from reinlm.trainer.scoring import ScoreShaper
from reinlm.utils.atomic import atomic_dir, atomic_write_text, remove_stale_temps
from reinlm.utils.fsdp import full_optimizer_state, load_full_optimizer_state, local_tensor
from reinlm.utils.integrity import json_file_problem
from reinlm.utils.jsonio import write_json
from reinlm.utils.rng import set_rng_state

log = logging.getLogger("reinlm")


class RunnableTrainer(Protocol):
    """What the run shell needs of a trainer (:class:`reinlm.trainer.loop.Trainer` is one; this module does not
    import it: the loop imports this module)."""

    run_dir: Path
    start_step: int  # the step a resumed run continues from
    steps_done: int
    last_healthy_ckpt: int | None  # the newest checkpoint written before any degeneration alarm

    @property
    def cfg(self) -> TrainConfig: ...
    @property
    def is_main(self) -> bool: ...
    @property
    def accelerator(self) -> Any: ...
    @property
    def policy(self) -> Policy: ...
    @property
    def algorithm(self) -> Algorithm: ...
    @property
    def optimizer(self) -> torch.optim.Optimizer: ...
    @property
    def scheduler(self) -> torch.optim.lr_scheduler.LRScheduler: ...
    @property
    def kl_ctl(self) -> AdaptiveKLController | ConstantKLController: ...
    @property
    def shape_scores(self) -> ScoreShaper: ...
    @property
    def monitor(self) -> DegenerationMonitor: ...
    @property
    def reward_set(self) -> Any: ...
    @property
    def full_prompts(self) -> Any: ...
    @property
    def sharded(self) -> bool: ...  # FSDP over several processes: every process joins saving and evaluation
    @property
    def sharded_module(self) -> Any: ...  # the FSDP-wrapped module (None: not sharded)

    def train_step(self, step: int) -> dict[str, Any]: ...
    def evaluate_held_out(self, tag: str) -> dict[str, Any]: ...
    def resume(self) -> int: ...
    def _save(self, step: int) -> None: ...

RUN_OUTPUTS = ("metrics.jsonl", "samples.jsonl", "checkpoints", "final", "train_eval.json", "tb")


def previous_run_outputs(run_dir: str | Path, overwrite: bool = False) -> list[str]:
    """The outputs of an earlier run found in ``run_dir`` (names from ``RUN_OUTPUTS``).

    Raises :class:`ReinlmError` when there are some and ``overwrite`` is false, unless that run never saved a
    checkpoint or a final model (it failed at start): there is nothing to resume, so a fresh start replaces it.
    """
    found = [n for n in RUN_OUTPUTS if (Path(run_dir) / n).exists()]
    if found and not overwrite and latest_checkpoint(run_dir) is None and not (Path(run_dir) / "final").exists():
        return found
    if found and not overwrite:
        raise ReinlmError(f"out: {str(run_dir)!r} already holds a run ({', '.join(found)}); continue it with "
                          f"--resume {run_dir}, replace it with --overwrite, or choose another --out.")
    return found


def prepare_fresh_run_dir(run_dir: str | Path, overwrite: bool) -> None:
    """Create ``run_dir`` for a fresh run; an earlier run there is an error unless ``overwrite`` removes it.

    Without this check a fresh run would append its metrics to the old run's ``metrics.jsonl`` and leave the
    old checkpoints beside the new ones.
    """
    run_dir = Path(run_dir)
    found = previous_run_outputs(run_dir, overwrite)
    if found and not overwrite:
        note(f"out: {run_dir} held a run that saved no checkpoint ({', '.join(found)}); starting afresh in its place.")
    for name in found:
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)


# ---------------------------------------------------------------------------------------------- checkpoints
def resume(tr: RunnableTrainer) -> int:
    """Load the newest complete checkpoint of ``tr.run_dir`` into ``tr``; returns the step to continue from."""
    found = latest_checkpoint(tr.run_dir)
    if found is None:
        raise ReinlmError(f"resume: {str(tr.run_dir)!r} has no complete checkpoint under checkpoints/; "
                          "start the run without --resume.")
    step, ckpt = found
    tr.policy.load(ckpt / "policy")
    load_value_head(ckpt, tr.policy.value_head)
    optimizer_state = torch.load(ckpt / "optimizer.pt", weights_only=False)
    if tr.sharded_module is not None:  # the whole state, keyed by parameter names: each process keeps its shards
        load_full_optimizer_state(tr.sharded_module, tr.optimizer, optimizer_state)
    else:
        tr.optimizer.load_state_dict(optimizer_state)
    tr.scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=False))
    state = load_trainer_state(ckpt)
    tr.kl_ctl.load_state_dict(state["kl_controller"])
    if tr.shape_scores.moments is not None and state.get("score_moments"):
        tr.shape_scores.moments.load_state_dict(state["score_moments"])
    if tr.monitor is not None and state.get("degeneration"):
        tr.monitor.load_state_dict(state["degeneration"])
    tr.algorithm.load_state_dict(state.get("algorithm") or {})
    set_rng_state(torch.load(ckpt / "rng.pt", weights_only=False))
    tr.start_step = step
    if tr.is_main:
        note(f"resumed {tr.run_dir} from step {step}")  # printed from Python as from the CLI
    return step


def check_policy_weights(tr: RunnableTrainer, step: int) -> None:
    """Refuse to write a checkpoint or final model with a nan/inf weight (guards.check_weights)."""
    params = tr.policy.trainable_parameters()  # FSDP: each process checks its own shards
    check_weights(((f"trainable tensor {i} {tuple(p.shape)}", local_tensor(p)) for i, p in enumerate(params)), step,
                  "the policy")


def save(tr: RunnableTrainer, step: int) -> None:
    """Checkpoint ``step``, written by the main process: policy, value head, optimiser, scheduler, the KL
    controller, running score moments, degeneration monitor, the algorithm's state, RNG (trainer/checkpoint.py).
    Under FSDP every process calls it (the shards are gathered first); otherwise the other processes return."""
    if not (tr.is_main or tr.sharded):
        return
    check_policy_weights(tr, step)
    optimizer_state = None
    if tr.sharded_module is not None:
        tr.policy.gather_state()
        optimizer_state = full_optimizer_state(tr.sharded_module, tr.optimizer)
        if not tr.is_main:
            return
    moments = tr.shape_scores.moments
    state = {"kl_controller": tr.kl_ctl.state_dict(),
             "score_moments": moments.state_dict() if moments else None,
             "degeneration": tr.monitor.state_dict() if tr.monitor is not None else None,
             "algorithm": tr.algorithm.state_dict()}
    save_checkpoint(tr.run_dir, step, policy_saver=tr.policy.save, optimizer=tr.optimizer,
                    scheduler=tr.scheduler, trainer_state=state, config=config_to_dict(tr.cfg),
                    value_head=tr.policy.value_head, keep=tr.cfg.keep_checkpoints, optimizer_state=optimizer_state)
    tr.last_healthy_ckpt = step


# ---------------------------------------------------------------------------------------------- the run
def run(tr: RunnableTrainer, resume_run: bool) -> Path:
    """Run (or continue) training; returns the run directory.

    The main process holds the run-directory lock throughout (a second writer is refused). A non-finite
    loss, gradient norm or weight stops the run with a :class:`NonFiniteError` before it reaches the
    weights or any file; the checkpoints written so far stay.
    """
    lock = RunLock(tr.run_dir) if tr.is_main else None
    if lock is not None:
        lock.acquire()
    try:
        return _run_locked(tr, resume_run)
    except NonFiniteError as e:
        last = latest_checkpoint(tr.run_dir) if tr.is_main else None
        raise NonFiniteError(stopped_message(e, tr.run_dir, last[0] if last else None)) from None
    finally:
        if lock is not None:
            lock.release()


def _run_locked(tr: RunnableTrainer, resume_run: bool) -> Path:
    cfg = tr.cfg
    inputs = describe_inputs(tr.full_prompts, tr.reward_set)
    if tr.is_main:
        for where in (tr.run_dir, tr.run_dir / "checkpoints"):
            for name in remove_stale_temps(where):  # leftovers of a killed write (we hold the lock)
                log.info("removed %s/%s, left by an interrupted write", where, name)
    evaluation: dict[str, Any] = {}
    eval_path = tr.run_dir / "train_eval.json"
    if (tr.is_main or tr.sharded) and not resume_run:  # FSDP: every process joins the policy's forwards
        # before anything is written: a reward or prompt that fails on the first samples leaves no run behind
        evaluation["before"] = tr.evaluate_held_out("before")
    if resume_run:
        check_resume_inputs(tr.run_dir, inputs)  # refuse to continue on other prompts or rewards
        tr.resume()
    elif tr.is_main:
        prepare_fresh_run_dir(tr.run_dir, cfg.overwrite)
        write_inputs(tr.run_dir, inputs)
    if tr.is_main:
        atomic_write_text(tr.run_dir / "config.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        if not resume_run:
            write_json(eval_path, evaluation)  # now, so a resumed run keeps the "before" half
    logger = RunLogger(tr.run_dir, cfg.log, config_to_dict(cfg), enabled=tr.is_main,
                       resume_step=tr.start_step if resume_run else None)
    stopped_reason = _steps(tr, logger)
    if tr.is_main or tr.sharded:
        _finish(tr, evaluation, eval_path, stopped_reason)
    logger.close()
    tr.accelerator.wait_for_everyone()
    return tr.run_dir


def _steps(tr: RunnableTrainer, logger: RunLogger) -> str | None:
    """The steps from ``tr.start_step`` on: log metrics and samples, show progress, watch for degeneration,
    checkpoint. Returns why the run stopped early (None when it ran every step)."""
    cfg = tr.cfg
    bar = None
    if tr.is_main:  # a tqdm bar, or with --progress false one plain line per step
        bar = step_bar(cfg.steps, f"{cfg.algo}/{cfg.space}", initial=tr.start_step, enabled=cfg.progress)
    try:
        for step in range(tr.start_step, cfg.steps):
            out = tr.train_step(step)
            tr.steps_done = step + 1
            m = out["metrics"]
            batch = out["batch"]
            ppl = m.get("response/perplexity_ref", m.get("response/perplexity_frozen"))
            alarm = (tr.monitor.observe(step + 1, batch.completions, perplexity=ppl)
                     if tr.monitor is not None else None)
            m["alarm/degeneration"] = int(alarm is not None)
            logger.log_metrics(step + 1, m)
            if cfg.sample_every and (step % cfg.sample_every == 0 or step + 1 == cfg.steps):
                logger.log_samples(step + 1, batch.prompts, batch.completions, out["scores"].tolist(),
                                   extra=out["extras"])
                if cfg.print_completions and tr.is_main:
                    note(format_samples(step + 1, batch.prompts, batch.completions, out["scores"].tolist(),
                                        cfg.print_completions))
            if bar is not None:
                bar.set_postfix(reward=f"{m['reward/mean']:.3f}", kl=f"{m['kl/mean']:.3f}",
                                cps=f"{m['perf/completions_per_s']:.1f}")
                bar.update(1)
            if alarm is not None:
                log.warning("degeneration alarm at step %d: %s", step + 1, alarm)
                if cfg.stop_on_degeneration:
                    return f"degeneration at step {step + 1}"
            if (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps and (tr.is_main or tr.sharded):
                with _task(tr, f"saving checkpoint step-{step + 1}"):
                    tr._save(step + 1)
    finally:
        if bar is not None:
            bar.close()
    return None


def _task(tr: RunnableTrainer, desc: str) -> contextlib.AbstractContextManager[None]:
    """The progress line of a long task, on the main process only."""
    return task(desc) if tr.is_main else contextlib.nullcontext()


def _save_final(tr: RunnableTrainer, step: int) -> None:
    """``final/`` from the live policy; its files equal to checkpoint ``step``'s policy files become hard links."""
    with atomic_dir(tr.run_dir / "final") as tmp:
        tr.policy.save_final(tmp)
        share_identical_files(tmp, checkpoint_dir(tr.run_dir, step) / "policy")


def _finish(tr: RunnableTrainer, evaluation: dict[str, Any], eval_path: Path, stopped_reason: str | None) -> None:
    """Main process (under FSDP every process: the shards are gathered, the main process writes), after the steps:
    the last checkpoint and the final model (on an early stop, the last healthy checkpoint's policy), then the
    "after" evaluation merged into ``train_eval.json``."""
    cfg = tr.cfg
    final_step = cfg.steps if stopped_reason is None else (tr.last_healthy_ckpt or 0)
    if stopped_reason is None:
        with _task(tr, f"saving checkpoint step-{cfg.steps} and the final model in {tr.run_dir / 'final'}"):
            tr._save(cfg.steps)  # FSDP: gathers the whole state, which the final model reuses
            if tr.is_main:
                _save_final(tr, cfg.steps)
    elif tr.last_healthy_ckpt is not None:
        tr.policy.load(checkpoint_dir(tr.run_dir, tr.last_healthy_ckpt) / "policy")
        tr.policy.gather_state()
        if tr.is_main:
            _save_final(tr, tr.last_healthy_ckpt)
    evaluation["after"] = tr.evaluate_held_out("after")
    if not tr.is_main:
        return
    if stopped_reason:
        evaluation["stopped"] = stopped_reason
    evaluation["final_step"] = final_step
    if eval_path.is_file():  # the "before" half, written at the start (possibly by an earlier process)
        if json_file_problem(eval_path) is None:
            evaluation = {**json.loads(eval_path.read_text()), **evaluation}
    write_json(eval_path, evaluation)
