"""Generated protobuf modules (see generate.py); never edited by hand."""
