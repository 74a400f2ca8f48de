"""The logs a3s-box keeps per box on the host: capped, rotated, never blocking.

writer.py   RotatingFile (size cap, N files, drop-and-count on a full disk) and
            TimestampedLines (each line stamped with when it began)
reader.py   reading across the rotated files: tail, since, follow through a rotation
"""
