"""glibc malloc settings for CPU runs that allocate and free the same large tensors batch after batch."""
import ctypes
import sys

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_KEEP_BYTES = 2**31 - 1  # largest value mallopt's int takes: freed heap memory is kept up to 2 GiB


def keep_freed_memory():
    """Asks glibc's malloc to serve large blocks from the heap and to keep freed memory for reuse, instead of
    mapping fresh pages for every large tensor and unmapping them when it is freed; returns whether it could.

    A CPU forward pass allocates each layer's output (tens of MB per batch) and frees it a moment later. By
    default glibc serves such blocks with mmap, and the kernel zeroes every page again at its first touch:
    on the 800-image dissection benchmark 1.8 M page faults and 4.8 s of system time (of 30 s of CPU); with
    this, 0.3 M and 1.4 s (measured with the equivalent GLIBC_TUNABLES, benchmarks/NOTES.md). The cost: the
    process keeps what it freed (peak RSS 1.39 → 1.65 GB there). No effect, and False, where the C library is
    not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt / no libc.so.6
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))
