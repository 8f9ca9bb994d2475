"""``python -m mistralrs``: the same CLI as the ``mistralrs`` command."""

from mistralrs.cli import main

main()
