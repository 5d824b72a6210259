"""UserError: the base of every error a user can fix (a bad config value, a missing or damaged file).

The command lines (ecg_contrastive.main, export.predict, data.prepare and sweep through `exit_code`) print such
an error as one line, `error: <message>`, and exit with code 2; any other exception is a bug and keeps its
traceback.
Set ECG_CONTRASTIVE_TRACEBACK=1 (or pass --verbose) to see the traceback of a UserError too.

A module raises one by subclassing both UserError and the builtin class callers expect:

    class SourceError(UserError, ValueError): ...

and writes a message that names the key or file and says what to do.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable

TRACEBACK_ENV = "ECG_CONTRASTIVE_TRACEBACK"

# Write failures caused by the machine, not the code, with what to do: main prints them as one line naming the
# file, and a checkpoint save turns them into a CheckpointError.
ENVIRONMENT_ERRNOS = {
  errno.ENOSPC: "free space there or point --workdir / config.data_dir / config.text.cache_dir elsewhere",
  errno.EDQUOT: "free space within your quota or point --workdir elsewhere",
  errno.EROFS: "the file system is read-only: point --workdir (or the data and cache dirs) at a writable one",
  errno.EACCES: "no permission: fix the folder's permissions or point --workdir elsewhere",
  errno.EPERM: "no permission: fix the folder's permissions or point --workdir elsewhere",
  errno.EIO: "the disk reported an I/O error: check it, or point --workdir elsewhere",
}


class UserError(Exception):
  """A mistake the user can fix; str(error) names the key or file and what to do."""


class DataError(UserError, ValueError):
  """A dataset, split or cache that cannot be used as asked (no such split, fewer records than a batch, a
  data order that does not match the checkpoint's, a cache that does not read back)."""


def one_line(error: BaseException) -> str:
  """The error's message on one line (newlines and runs of spaces collapsed)."""
  return " ".join(str(error).split()) or type(error).__name__


def want_traceback(argv: list[str] | None = None) -> bool:
  """Whether --verbose is on the command line or $ECG_CONTRASTIVE_TRACEBACK is set (not '0' or empty)."""
  return os.environ.get(TRACEBACK_ENV, "") not in ("", "0") or "--verbose" in (argv or [])


def exit_code(
  run: Callable[[], int],
  verbose: bool,
  mistakes: tuple[type[BaseException], ...] = (UserError, FileNotFoundError),
) -> int:
  """A command's exit code: run()'s, or 2 after `error: <one line>` on stderr when it raises one of `mistakes`
  (a user's, not a bug); with `verbose` the error is raised again, traceback and all."""
  try:
    return run()
  except mistakes as e:
    if verbose:
      raise
    print(f"error: {one_line(e)}", file=sys.stderr)
    return 2
