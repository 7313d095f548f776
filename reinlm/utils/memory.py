"""The peak resident memory of this process."""

from __future__ import annotations

import sys


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB.

    Linux: ``VmHWM`` of /proc/self/status, which starts afresh at exec. Not ``ru_maxrss``: it carries the peak of
    the process this one was forked from across the exec, so a benchmark child started by a large parent (the
    demo, after training in-process) reported the parent's peak (both sides of latent-vs-token showed 7,926 MB).
    Elsewhere: ``ru_maxrss`` (KiB on Linux, bytes on macOS).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0
