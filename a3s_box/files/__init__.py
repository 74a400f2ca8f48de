"""Files in and out of a running box (`box cp`, `BoxHandle.files`).

    errors.py      FilesError, the one error of this package
    tarstream.py   tar streams on the host: made in chunks, extracted safely
    records.py     what /.a3s/fs writes (entries, watch events), parsed without I/O
    watch.py       Watch: a folder's events from /.a3s/fs watch, to a callback
    box_files.py   BoxFiles: write, read, upload, download, list, remove; stat, walk,
                   make_dir, move, watch
"""
from a3s_box.files.box_files import BoxFiles, FileEntry
from a3s_box.files.errors import FilesError
from a3s_box.files.records import FsEntry
from a3s_box.files.watch import Watch

__all__ = ["BoxFiles", "FileEntry", "FilesError", "FsEntry", "Watch"]
