"""The ``mistralrs`` command line."""

from mistralrs.cli._app import cli, main

__all__ = ["cli", "main"]
