"""The ``omax`` command line. Client commands talk to a running server over HTTP."""

from omax.cli.main import main

__all__ = ["main"]
