"""The ECG format and record I/O: constants, loaders, the reader with skip reasons."""
