"""Start a command as a terminal would, for the tests that interrupt it.

A suite started as a background job without job control (``cmd &`` in a script, as CI may) inherits
SIGINT ignored, and ``cxr`` keeps an ignored signal ignored, as ``nohup`` expects: a Ctrl-C test would then
see the command finish. :func:`as_at_a_terminal` (a ``preexec_fn``) gives the child SIGINT's default
disposition back, and the command installs its own handler over it.
"""

from __future__ import annotations

import signal


def as_at_a_terminal() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
