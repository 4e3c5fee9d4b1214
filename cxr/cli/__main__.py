"""``python -m cxr.cli``: the same as the ``cxr`` command."""

from cxr.cli.main import main

main()
