"""docs/python-api.md runs as written: `# file:` blocks are written to those files, `python X.py` and `reinlm ...`
lines run in order in an empty directory, with the tiny test model in place of the embedded SmolLM2-135M the
document names (the code is the point here; the embedded model trains in test_hub.py and
test_trl_migration_example.py; with it this test took 184 s of a loaded run)."""

from __future__ import annotations

import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest
import yaml

from reinlm.utils.jsonio import read_jsonl

DOC = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"
BLOCK = re.compile(r"```(python|bash)\n(.*?)```", re.DOTALL)


def doc_steps(text: str) -> list[tuple[str, str]]:
    """[("file", "name.py\\ncontent") | ("python", "name.py") | ("reinlm", "args")] in document order."""
    steps = []
    for lang, body in BLOCK.findall(text):
        first = body.splitlines()[0] if body.strip() else ""
        if lang == "python" and first.startswith("# file: "):
            steps.append(("file", first[len("# file: "):].strip() + "\n" + body))
        elif lang == "bash":
            for line in body.splitlines():
                if line.startswith("python "):
                    steps.append(("python", line.split()[1]))
                elif line.startswith("reinlm "):
                    steps.append(("reinlm", line[len("reinlm "):]))
    return steps


def test_doc_blocks_are_found():
    kinds = [k for k, _ in doc_steps(DOC.read_text())]
    assert kinds == ["file", "file", "python", "reinlm", "file", "python"]


def test_python_api_doc_runs_and_its_run_resumes_from_the_cli(tmp_path, monkeypatch, smol_tokenizer):
    from reinlm.cli.main import main
    from reinlm.testing import save_tiny_model

    tiny = save_tiny_model(smol_tokenizer, tmp_path / "tiny-model")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    models = 0
    for kind, what in doc_steps(DOC.read_text()):
        if kind == "file":
            name, content = what.split("\n", 1)
            models += content.count('model="smollm2-135m"')
            (tmp_path / name).write_text(content.replace('model="smollm2-135m"', f"model={tiny!r}"))
        elif kind == "python":
            runpy.run_path(str(tmp_path / what), run_name="__main__")
        else:
            assert main(shlex.split(what)) == 0, what
    run = tmp_path / "runs" / "api-example"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    rewards = str((tmp_path / "my_rewards.py").resolve())
    assert saved["reward"] == f"{rewards}:correct + 0.1*{rewards}:brevity"
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2, 3]  # resumed from the CLI to step 3
    assert models == 2 and saved["model"] == tiny  # both examples ran on the substituted model
    assert "user/has_number" in read_jsonl(run / "metrics.jsonl")[0]  # log_metric reached metrics.jsonl
    assert (tmp_path / "runs" / "trainer-example" / "final").is_dir()
    sys.modules.pop("my_rewards", None)
