"""What the two command-line tools share: the image files of a folder and the process pool."""

from __future__ import annotations

import multiprocessing
import os
import re
from typing import Callable, Iterable, List, Optional

# face_recognition matches the extension anywhere after a dot (re.match of '.*\.(jpg|jpeg|png)'),
# so "a.png.txt" counts too; kept for the same file lists.
_IMAGE_NAME = re.compile(r".*\.(jpg|jpeg|png)", flags=re.I)


def image_files_in_folder(folder: str) -> List[str]:
    """The image files directly in `folder`, in os.listdir order, joined to the folder."""
    return [os.path.join(folder, name) for name in os.listdir(folder) if _IMAGE_NAME.match(name)]


def run_in_process_pool(function: Callable, argument_tuples: Iterable[tuple], cpus: int) -> None:
    """`function(*args)` for each tuple in a pool of `cpus` processes (-1: one per core), with
    the forkserver start method where it exists (face_recognition: macOS' libdispatch)."""
    processes: Optional[int] = None if cpus == -1 else cpus
    context = multiprocessing
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
    pool = context.Pool(processes=processes)
    try:
        pool.starmap(function, argument_tuples)
    finally:
        # close + join, not terminate: the workers exit normally and flush what they printed.
        pool.close()
        pool.join()
