"""The one error of a3s_box.files (its own module, so that the record parser below
box_files can raise it too)."""
from __future__ import annotations

from a3s_box.errors import BoxError


class FilesError(BoxError):
    """A copy into or out of a box, or an operation on its files, failed: names the box
    and the path (a malformed answer from the guest, before it is placed, says only what
    was wrong with it)."""
