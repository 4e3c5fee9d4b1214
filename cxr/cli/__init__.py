"""The ``cxr`` command line: thin shells over the library, one module per group of commands.

- :mod:`cxr.cli.data`: synth, inspect, ingest, stats, manifest, gc
- :mod:`cxr.cli.learn`: train, evaluate, report, predict, lineage
- :mod:`cxr.cli.serve`: serve (a model behind HTTP)
- :mod:`cxr.cli.pipeline`: demo, deploy, study (the Prefect flows)
- :mod:`cxr.cli.stack`: stack up, down, status, env
"""

from __future__ import annotations

import typer

from cxr.cli import data, learn, pipeline, serve, stack
from cxr.offline import set_offline_defaults
from cxr.redact import install_log_redaction

app = typer.Typer(
    name="cxr",
    help="Chest X-ray classifiers on imbalanced archives: synth, ingest, stats, manifest, train, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # plain click help: flags without a <bool> placeholder
)


@app.callback()
def _offline_defaults() -> None:
    """Quiet, offline defaults for the services cxr starts (each can still be overridden by the user);
    credentials in URLs redacted in every log record (Prefect's and MLflow's included)."""
    set_offline_defaults()
    install_log_redaction()


for command in (data.synth, data.inspect, data.ingest, data.stats, data.manifest, data.gc):
    app.command()(command)
app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)(learn.train)
for command in (learn.evaluate, learn.report, learn.predict, learn.lineage, serve.serve):
    app.command()(command)
for command in (pipeline.demo, pipeline.deploy, pipeline.study):
    app.command()(command)
app.add_typer(stack.app, name="stack")
