"""Writing output folders so that a failure never leaves one that looks complete."""

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


def folder_is_nonempty(path: Path) -> bool:
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


@contextlib.contextmanager
def staged_output_folder(output: str | os.PathLike, overwrite: bool = False):
    """Yield a hidden temporary folder beside `output`; when the block ends without an error it replaces `output`
    (renamed into place), otherwise it is removed. Refuses a non-empty `output` unless `overwrite`.

    Raises:
        `FileExistsError` for a non-empty `output` without `overwrite`.
    """
    output = Path(output).absolute()
    if folder_is_nonempty(output) and not overwrite:
        raise FileExistsError(f"{output} exists and is not empty; pass --overwrite to replace it.")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.incomplete-", dir=output.parent))
    try:
        yield staging
        if output.exists():
            shutil.rmtree(output) if output.is_dir() else output.unlink()
        os.replace(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


__all__ = ["folder_is_nonempty", "staged_output_folder"]
