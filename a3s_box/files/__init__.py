"""Files in and out of a running box (`box cp`, `BoxHandle.files`).

    tarstream.py   tar streams on the host: made in chunks, extracted safely
    box_files.py   BoxFiles: write, read, upload, download, list, remove
"""
from a3s_box.files.box_files import BoxFiles, FileEntry, FilesError

__all__ = ["BoxFiles", "FileEntry", "FilesError"]
