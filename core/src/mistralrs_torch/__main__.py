"""``python -m mistralrs_torch``: the same CLI as the ``mistralrs`` command."""

from mistralrs_torch.cli import main

main()
