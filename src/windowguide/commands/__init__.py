"""The jobs behind the command line; each is also callable from Python."""
