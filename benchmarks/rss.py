"""Peak and current resident memory of this process (Linux /proc, getrusage), without torch: the ONNX Runtime
worker of benchmarks/anchors imports this and nothing heavier, so its peak RSS is ONNX Runtime's own.
common.py re-exports every function here."""
from __future__ import annotations


def proc_status_mb(field: str) -> float | None:
    """A kB line of /proc/self/status (VmRSS: resident now, VmHWM: peak resident) in MB; None without /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Restart VmHWM at the current RSS (Linux >= 4.0: 5 to clear_refs), so that a later VmHWM is the peak
    since now. False where the kernel does not allow it (then VmHWM is the process's whole peak)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def max_rss_mb() -> float:
    """The process's lifetime peak RSS from getrusage (MB). Linux carries it over exec from the forking parent,
    so a child of a large process reports at least the parent's peak: use VmHWM there."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def peak_rss_mb() -> float:
    """Peak resident memory of this process: VmHWM where there is /proc (it honours reset_peak_rss), else
    getrusage's."""
    hwm = proc_status_mb("VmHWM")
    return max_rss_mb() if hwm is None else hwm
