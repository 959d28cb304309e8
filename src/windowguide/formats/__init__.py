"""Readers of other projects' file formats that never execute what the files contain."""
