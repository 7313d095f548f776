"""Issue 18's building blocks, each on its own: the run-directory lock, verified checkpoints with fallback,
torn-line-tolerant logs, atomic writes and their leftovers, writable-output checks, model-directory checks,
secret redaction and the CLI's translation of OS errors (the end-to-end cases are in tests/test_fuzz*.py)."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from reinlm.errors import ReinlmError
from reinlm.trainer.checkpoint import checkpoint_problem, latest_checkpoint, list_checkpoints, save_checkpoint
from reinlm.trainer.runlock import RunDirLocked, RunLock
from reinlm.utils.atomic import atomic_dir, atomic_write_text, remove_stale_temps
from reinlm.utils.integrity import safetensors_problem
from reinlm.utils.jsonio import read_jsonl
from reinlm.utils.oserrors import describe_os_error
from reinlm.utils.outdir import ensure_writable_dir
from reinlm.utils.redact import redact_secrets, register_secret

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- run-directory lock
def test_lock_is_reentrant_within_a_process_and_records_the_holder(tmp_path):
    run = tmp_path / "run"
    with RunLock(run):  # the CLI takes it before loading models, the Trainer again
        with RunLock(run):
            assert json.loads((run / ".lock").read_text())["pid"] == os.getpid()
        assert json.loads((run / ".lock").read_text())["pid"] == os.getpid()  # still held by the outer one
    assert not run.exists()  # released; the directory it created held nothing else, so it is gone


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    run = tmp_path / "run"
    code = textwrap.dedent(f"""
        import os, sys
        from reinlm.trainer.runlock import RunLock
        RunLock({str(run)!r}).acquire()
        print("locked", flush=True)
        sys.stdin.readline()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirLocked, match=f"pid {proc.pid}"):
            RunLock(run).acquire()
        proc.kill()
        proc.wait()
        lock = RunLock(run).acquire()  # the kernel dropped the dead holder's lock
        assert json.loads((run / ".lock").read_text())["pid"] == os.getpid()
        lock.release()
    finally:
        proc.kill()


def test_lock_leaves_no_empty_directory_after_an_early_failure(tmp_path):
    run = tmp_path / "fresh"
    with pytest.raises(ValueError):
        with RunLock(run):
            raise ValueError("failed before writing anything")
    assert not run.exists()


# --------------------------------------------------------------------------- writable outputs
def test_output_that_is_a_file_under_a_file_or_read_only(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ReinlmError, match="is a file, not a directory"):
        ensure_writable_dir(f)
    with pytest.raises(ReinlmError, match="lies under .*which is a file"):
        ensure_writable_dir(f / "sub" / "run")
    import tempfile

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    with pytest.MonkeyPatch.context() as mp:  # a read-only directory, also when the tests run as root
        mp.setattr(tempfile, "mkstemp", denied)
        with pytest.raises(ReinlmError, match=r"cannot write in .*\(permission denied\)"):
            ensure_writable_dir(tmp_path / "ro_sim")
    if os.geteuid() == 0:
        return  # root writes everywhere: the chmod case below cannot fail
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ReinlmError, match="permission denied"):
            ensure_writable_dir(ro / "run")
    finally:
        ro.chmod(0o700)


def test_os_errors_are_described_in_words():
    msg = describe_os_error(OSError(errno.ENOSPC, "No space left on device", "/runs/x/metrics.jsonl"))
    assert msg.startswith("disk full") and "/runs/x/metrics.jsonl" in msg and "--resume" in msg
    assert "permission denied" in describe_os_error(PermissionError(errno.EACCES, "Permission denied", "/a"))
    assert "read-only" in describe_os_error(OSError(errno.EROFS, "Read-only file system", "/a"))


def test_cli_turns_a_full_disk_into_exit_2(monkeypatch, capsys):
    from reinlm.cli import main as cli

    def boom(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/x/checkpoints/step-3/optimizer.pt")

    monkeypatch.setattr(cli, "_load", lambda name: type("M", (), {"add_parser": staticmethod(
        lambda sub: sub.add_parser(name)), "run": staticmethod(boom)}) if name == "report" else None)
    assert cli.main(["report"]) == 2
    err = capsys.readouterr().err
    assert "disk full" in err and "optimizer.pt" in err and "Traceback" not in err


# --------------------------------------------------------------------------- atomic writes
def test_atomic_dir_leaves_old_version_on_failure_and_cleanup_restores(tmp_path):
    final = tmp_path / "out"
    with atomic_dir(final) as d:
        (d / "a").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as d:
            (d / "a").write_text("half")
            raise RuntimeError("killed")
    assert (final / "a").read_text() == "v1" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    # leftovers of a SIGKILL: a temp dir, a temp file, and a kill between the two renames (.out.old, no out)
    (tmp_path / ".out.tmp-abc").mkdir()
    (tmp_path / ".metrics.jsonl.tmp-xyz").write_text("partial")
    final.rename(tmp_path / ".out.old")
    removed = remove_stale_temps(tmp_path)
    assert set(removed) == {".out.tmp-abc", ".metrics.jsonl.tmp-xyz", ".out.old"}
    assert (final / "a").read_text() == "v1" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    atomic_write_text(path, "steps: 3\n")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError):
        atomic_write_text(path, "steps: 4\n")
    assert path.read_text() == "steps: 3\n" and [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_torn_last_line_of_a_log_is_skipped(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "rew')
    assert read_jsonl(p) == [{"step": 1}, {"step": 2}]
    from reinlm.trainer.logging import RunLogger

    RunLogger(tmp_path, backend="none", resume_step=2)
    assert p.read_text() == '{"step": 1}\n{"step": 2}\n'


# --------------------------------------------------------------------------- checkpoints
def _save(run, step, model, keep=3):
    from safetensors.torch import save_file

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.ones(1, 4)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)

    def saver(d):
        d.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / "model.safetensors"))
        (d / "config.json").write_text('{"model_type": "tiny"}')

    return save_checkpoint(run, step, policy_saver=saver, optimizer=opt, scheduler=sched,
                           trainer_state={"kl_controller": {}}, config={"steps": 9}, keep=keep)


@pytest.mark.parametrize("victim,damage", [
    ("optimizer.pt", "truncate"), ("rng.pt", "truncate"), ("scheduler.pt", "empty"),
    ("policy/model.safetensors", "truncate"), ("policy/model.safetensors", "garbage"),
    ("trainer_state.json", "truncate"), ("policy/config.json", "garbage"), ("config.yaml", "empty"),
])
def test_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, caplog, victim, damage):
    model = torch.nn.Linear(4, 3)
    for step in (5, 6):
        _save(tmp_path, step, model)
    assert latest_checkpoint(tmp_path)[0] == 6
    f = tmp_path / "checkpoints" / "step-6" / victim
    data = f.read_bytes()
    f.write_bytes({"truncate": data[: len(data) // 2], "empty": b"", "garbage": b"\x00garbage" * 10}[damage])
    with caplog.at_level(logging.WARNING, logger="reinlm"):
        step, path = latest_checkpoint(tmp_path)
    assert step == 5
    assert "skipped checkpoints/step-6" in caplog.text and Path(victim).name in caplog.text


def test_every_checkpoint_damaged_is_a_clear_error(tmp_path):
    model = torch.nn.Linear(4, 3)
    _save(tmp_path, 5, model)
    (tmp_path / "checkpoints" / "step-5" / "optimizer.pt").write_bytes(b"")
    with pytest.raises(ReinlmError, match=r"no checkpoint .* can be read: checkpoints/step-5 \(optimizer.pt"):
        latest_checkpoint(tmp_path)


def test_save_removes_leftovers_of_killed_writes_and_keeps_newest(tmp_path):
    model = torch.nn.Linear(4, 3)
    _save(tmp_path, 1, model)
    (tmp_path / "checkpoints" / ".step-2.tmp-dead").mkdir()
    (tmp_path / ".final.tmp-dead").mkdir()
    _save(tmp_path, 2, model, keep=1)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-2"]
    assert not (tmp_path / ".final.tmp-dead").exists()
    assert checkpoint_problem(tmp_path / "checkpoints" / "step-2") is None
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2]


def test_safetensors_check(tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "m.safetensors"
    save_file({"w": torch.zeros(10)}, str(p))
    assert safetensors_problem(p) is None
    p.write_bytes(p.read_bytes()[:-4])
    assert "truncated" in safetensors_problem(p)
    p.write_bytes(b"not a safetensors file at all")
    assert "not a safetensors file" in safetensors_problem(p)


def test_json_check_parses_an_unchanged_file_once_and_sees_every_change(tmp_path, monkeypatch):
    """A model directory is checked at every load: a JSON file found valid is not parsed again while it is unchanged
    (its size and modification time), and any rewrite is seen, a same-size one too; a file written within the
    last 2 s is not remembered (a rewrite may keep its timestamp)."""
    import json
    import os
    import time

    from reinlm.utils import integrity

    parsed = []
    real = json.loads
    monkeypatch.setattr(integrity.json, "loads", lambda text: parsed.append(1) or real(text))
    p = tmp_path / "tokenizer.json"
    p.write_text('{"a": 1}')
    assert integrity.json_file_problem(p) is None and integrity.json_file_problem(p) is None
    assert len(parsed) == 2  # just written: parsed each time
    old = time.time() - 10
    os.utime(p, (old, old))
    assert integrity.json_file_problem(p) is None and integrity.json_file_problem(p) is None
    assert len(parsed) == 3  # unchanged since: parsed once
    p.write_text('{"a": 1')  # shorter
    assert "not valid JSON" in integrity.json_file_problem(p)
    p.write_text('{"a": 1}')
    os.utime(p, (old, old))
    assert integrity.json_file_problem(p) is None
    p.write_text('{"a" 12}')  # the same size, a new timestamp
    assert "not valid JSON" in integrity.json_file_problem(p)


# --------------------------------------------------------------------------- model directories
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, smol_tokenizer):
    from reinlm.testing import save_tiny_model

    return save_tiny_model(smol_tokenizer, tmp_path_factory.mktemp("tiny") / "model", seed=3)


def test_model_dir_with_bad_config_or_truncated_weights_is_named(tmp_path, tiny_dir):
    import shutil

    from reinlm.hub import resolve_model_dir

    bad = tmp_path / "bad_config"
    shutil.copytree(tiny_dir, bad)
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ReinlmError, match=r"is a model directory, but config.json is not valid JSON"):
        resolve_model_dir(str(bad))
    trunc = tmp_path / "truncated"
    shutil.copytree(tiny_dir, trunc)
    w = trunc / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(ReinlmError, match=r"model.safetensors is truncated"):
        resolve_model_dir(str(trunc))


# --------------------------------------------------------------------------- secrets
@pytest.mark.parametrize("text", [
    "Authorization: Bearer sk-live-1234567890abcdef",
    "{'authorization': 'Bearer abc123def456ghi'}",
    "the critic named a positive phrase 'Bearer sk-proj-XYZ123456789' that is not in the text",
    "api_key=abcd1234efgh and token hf_abcdefghijklmnopqrstu",
])
def test_redaction_removes_keys_and_authorization_values(text):
    out = redact_secrets(text)
    assert "[REDACTED]" in out
    for secret in ("sk-live-1234567890abcdef", "abc123def456ghi", "XYZ123456789", "abcd1234efgh", "hf_abcdefghij"):
        assert secret not in out


def test_registered_and_environment_secrets_are_removed_whole_before_any_cut(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "plainwordsecret")
    register_secret("zzzz-odd-shaped-key")
    text = "echo: plainwordsecret / zzzz-odd-shaped-key"
    assert redact_secrets(text) == "echo: [REDACTED] / [REDACTED]"
    assert "plain" not in redact_secrets(text)[:20]
    assert redact_secrets("the bearer responsibilities stay") == "the bearer responsibilities stay"


def test_cli_logging_filter_redacts_every_record(capsys):
    from reinlm.cli.main import RedactSecrets

    logger = logging.getLogger("reinlm.test_redact")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactSecrets())
    logger.addHandler(handler)
    try:
        logger.warning("critic said %r", "Authorization: Bearer sk-abcdef1234567890")
    finally:
        logger.removeHandler(handler)
    err = capsys.readouterr().err
    assert "sk-abcdef" not in err and "[REDACTED]" in err


# --------------------------------------------------------------------------- non-finite guards
def test_guards_stop_on_nan_loss_grad_or_weight():
    from reinlm.trainer.guards import (NonFiniteError, check_grad_norm, check_loss, check_weights, grad_norm,
                                       stopped_message)

    check_loss(torch.tensor(1.5), 3)
    with pytest.raises(NonFiniteError, match=r"step 3: the loss is nan \(loss/kl=inf\)"):
        check_loss(torch.tensor(float("nan")), 3, {"loss/policy": 0.1, "loss/kl": float("inf")})
    model = torch.nn.Linear(3, 2)
    model(torch.ones(1, 3)).sum().backward()
    check_grad_norm(grad_norm(model.parameters()), 4)
    model.weight.grad[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match="step 4: the gradient norm is inf"):
        check_grad_norm(grad_norm(model.parameters()), 4)
    check_weights(model.named_parameters(), 5)
    with torch.no_grad():
        model.bias[1] = float("nan")
    with pytest.raises(NonFiniteError, match=r"non-finite weights \(bias\)") as e:
        check_weights(model.named_parameters(), 5)
    msg = stopped_message(e.value, "runs/x", 4)
    assert "runs/x/checkpoints/step-4" in msg and "--resume runs/x" in msg


def test_full_disk_while_saving_a_checkpoint_keeps_the_old_ones(tmp_path, monkeypatch):
    import reinlm.trainer.checkpoint as ck

    model = torch.nn.Linear(4, 3)
    _save(tmp_path, 1, model)

    def torch_full(obj, f, *a, **k):  # what torch.save raises when the disk fills
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 460230592 vs 460230484")

    monkeypatch.setattr(ck.torch, "save", torch_full)
    monkeypatch.setattr(ck, "disk_full_at", lambda path: True)
    with pytest.raises(ReinlmError, match=r"^disk full while writing checkpoint step-2: no space left .*--resume"):
        _save(tmp_path, 2, model)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1] and checkpoint_problem(tmp_path / "checkpoints" / "step-1") is None
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-1"]  # no temp dir left


def test_full_disk_while_logging_names_the_file(tmp_path, monkeypatch):
    import builtins

    from reinlm.utils.jsonio import append_jsonl

    real_open = builtins.open

    class Full:
        def __init__(self, *a, **k):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def write(self, s):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(builtins, "open", lambda p, *a, **k: Full() if str(p).endswith("metrics.jsonl") else real_open(p, *a, **k))
    with pytest.raises(OSError) as e:
        append_jsonl(tmp_path / "metrics.jsonl", {"step": 1})
    assert e.value.filename == str(tmp_path / "metrics.jsonl")
    assert describe_os_error(e.value).startswith("disk full") and "metrics.jsonl" in describe_os_error(e.value)


def test_atomic_outputs_get_the_umask_default_mode(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "final") as d:
            (d / "w").write_text("x")
        atomic_write_text(tmp_path / "config.yaml", "a: 1\n")
        plain_dir, plain_file = tmp_path / "plain", tmp_path / "plain.txt"
        plain_dir.mkdir()
        plain_file.write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "final").stat().st_mode & 0o777 == plain_dir.stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "config.yaml").stat().st_mode & 0o777 == plain_file.stat().st_mode & 0o777 == 0o644


def test_peak_rss_of_a_child_is_its_own_not_its_large_parents():
    """A benchmark side started by a large process (the demo after training) must report its own peak: ru_maxrss
    carries the parent's peak across fork + exec (measured: 7,926 MB on both sides of the demo's comparison)."""
    import subprocess
    import sys

    ballast = bytearray(600 * 1024 * 1024)
    ballast[:: 4096] = b"\x01" * len(ballast[:: 4096])  # touch every page: the parent's peak is now > 600 MB
    code = "from reinlm.utils.memory import peak_rss_mb; print(peak_rss_mb())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    child_mb = float(done.stdout.strip().splitlines()[-1])
    del ballast
    assert child_mb < 500, child_mb  # importing reinlm.utils.memory needs well under 500 MB
