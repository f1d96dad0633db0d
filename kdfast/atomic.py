"""Files written whole or not at all: the content goes to a temporary file beside the target (named by the
process id, so two processes writing the same file never share one), which os.replace then moves over the
target in one step. A kill mid-write leaves the previous file (or none), never a torn one."""
import contextlib
import os
from pathlib import Path


@contextlib.contextmanager
def replacing(path):
    """Yields the temporary path to write; moves it onto `path` when the block ends without an error."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    yield tmp
    os.replace(tmp, path)


def write_text(path, text):
    with replacing(path) as tmp:
        tmp.write_text(text)
