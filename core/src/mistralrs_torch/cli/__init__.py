"""The ``mistralrs`` command line."""

from mistralrs_torch.cli._app import cli, main

__all__ = ["cli", "main"]
