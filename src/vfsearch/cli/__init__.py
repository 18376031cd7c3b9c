"""Command line: a thin shell over the library (the only place that uses click).

Every :class:`~vfsearch.errors.VfsError` is mapped once, here: one line ``error: <message>`` on
stderr and the error's exit code (the table is in :mod:`vfsearch.errors`); no tracebacks for user
mistakes. An error about a parameter (``param``) names the running command's flag for it, e.g.
``error: --layer: no layer given and the model has no default layer``. click's own usage errors
keep click's exit code 2 (bad input). Commands import the library only when they run, so start-up
(and ``--help``) stays fast.
"""

from __future__ import annotations

import sys

import click

from ..errors import VfsError
from ._util import CONTEXT, err
from .bench import bench_cmd
from .concepts import concepts_cmd
from .eval import eval_cmd
from .explain import explain_cmd
from .importing import import_cmd
from .index import index_cmd, info_cmd, layers_cmd, upgrade_cmd
from .map import map_cmd
from .search import search_cmd
from .serve import demo_cmd, serve_cmd

__all__ = ["main"]

#: exit code of an interrupted command (Ctrl-C)
INTERRUPTED = 130


def flag_for(command: click.Command | None, param: str | None) -> str | None:
    """The flag of ``command`` for the library keyword ``param`` (``"image_root"`` →
    ``--image-root``), or None when the command has no such option."""
    if command is None or not param:
        return None
    options = [p for p in command.params if isinstance(p, click.Option)]
    flag = "--" + param.replace("_", "-")
    for match in (lambda o: o.name == param, lambda o: flag in o.opts):
        for o in options:
            if match(o):
                return next((s for s in o.opts if s.startswith("--")), o.opts[0])
    return None


def error_line(e: VfsError, command: click.Command | None = None) -> str:
    """How the CLI shows an error: ``error: [--flag: ]<message>``."""
    flag = flag_for(command, e.param)
    return f"error: {flag}: {e.message}" if flag else f"error: {e.message}"


class _Group(click.Group):
    """Maps every :class:`VfsError` (and Ctrl-C) once, for every command."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except VfsError as e:
            name = ctx.invoked_subcommand
            err(error_line(e, self.get_command(ctx, name) if name else None))
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            err("interrupted; run the same command again to resume")
            sys.exit(INTERRUPTED)


@click.group(cls=_Group, context_settings=CONTEXT)
@click.version_option(package_name="vfsearch")
def main():
    """vfsearch: brush a region of an image, find the most similar regions in a whole dataset."""


for _cmd in (index_cmd, layers_cmd, info_cmd, upgrade_cmd, import_cmd, search_cmd, explain_cmd,
             serve_cmd, demo_cmd, bench_cmd, eval_cmd, map_cmd, concepts_cmd):
    main.add_command(_cmd)
