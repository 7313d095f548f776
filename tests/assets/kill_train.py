"""`reinlm train` that SIGKILLs itself inside a write, for tests/test_fuzz_resume.py.

REINLM_TEST_KILL_ON = "torch.save:N": the Nth torch.save call writes half of its file, then the process is
killed (a checkpoint's optimizer.pt / scheduler.pt / rng.pt); "publish:N": killed at the Nth atomic
directory publish, after every file is written and before the rename (checkpoints, then final/). Torch uses
2 threads, as in the test process, so that a resumed run can be compared bit for bit.
"""

import io
import os
import signal
import sys

import torch

torch.set_num_threads(2)
spec = os.environ.get("REINLM_TEST_KILL_ON", "")
if spec:
    kind, n = spec.split(":")
    n, calls = int(n), [0]

    def _die() -> None:
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    if kind == "torch.save":
        real_save = torch.save

        def save(obj, f, *args, **kwargs):
            calls[0] += 1
            if calls[0] == n:
                buf = io.BytesIO()
                real_save(obj, buf, *args, **kwargs)
                with open(f, "wb") as out:
                    out.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                _die()
            return real_save(obj, f, *args, **kwargs)

        torch.save = save
    elif kind == "publish":
        import reinlm.utils.atomic as utils

        real_fsync_tree = utils._fsync_tree

        def fsync_tree(root):
            real_fsync_tree(root)
            calls[0] += 1
            if calls[0] == n:
                _die()

        utils._fsync_tree = fsync_tree
    else:
        raise SystemExit(f"unknown REINLM_TEST_KILL_ON {spec!r}")

from reinlm.cli.main import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
