"""The command line: argument types and flags, and the commands (imported only by ``__main__``)."""
