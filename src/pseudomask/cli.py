"""pseudomask: pseudo instance masks from boxes or tags; one subcommand per stage, plus tools.

The stage subcommands come from the stage registry; the tools (init, inspect, show, evaluate) from
pseudomask.commands.

A stage's subcommand takes its ports as options (`--shard`, `--out`, ...), its settings as options generated
from the settings dataclass, `--config FILE` to take the stage's section of a config file, and `--threads`.
It runs the registry's function with `Stage.resolve`, as the workflow's rule does: same code, same defaults,
same device profile.
"""

from __future__ import annotations

import argparse
import json
import sys

import yaml

from . import __version__, commands
from .config import complete_config
from .errors import PseudomaskError
from .settings import add_arguments, given_arguments, option
from .registry import STAGES, Stage


def add_stage_parser(sub, stage: Stage) -> None:
    p = sub.add_parser(stage.command, help=stage.help, description=f"{stage.help}. Settings: config section "
                       f"`{stage.name}` (docs/configuration.md); stage page: docs/stages/{stage.name}.md.")
    g = p.add_argument_group("inputs and outputs")
    for port in stage.inputs + stage.outputs:
        g.add_argument(option(port.name), dest=f"p_{port.name}", required=not port.optional,
                       nargs="+" if port.many else None, help=port.help, metavar="PATH")
    p.add_argument("--config", metavar="YAML", help=f"take the settings of section `{stage.name}` of this config "
                                                    "file (options given here override them)")
    p.add_argument("--threads", type=int, default=stage.resources.get("threads", 1),
                   help=f"CPU threads (default: the rule's, {stage.resources.get('threads', 1)})"
                   + (" of each process" if stage.distributed else ""))
    if stage.distributed:
        g = p.add_argument_group("processes (data parallelism; docs/slurm.md)")
        g.add_argument("--gpus", type=int, default=1, metavar="N", help="processes on this node, one per GPU "
                       "(with --device cpu: CPU processes, gloo); > 1 starts them here (default: 1)")
        g.add_argument("--nodes", type=int, default=1, metavar="N", help="nodes: > 1 starts --gpus tasks per node "
                       "with srun, inside a Slurm job of that many nodes (default: 1)")
    add_arguments(p, stage.settings_class())
    p.set_defaults(func=lambda args: run_stage_command(stage, args))


def run_stage_command(stage: Stage, args: argparse.Namespace) -> int:
    section = {}
    if args.config:
        section = complete_config(_read_yaml(args.config))[stage.name]
    settings = stage.resolve(section, given_arguments(args))
    ports = {k[2:]: v for k, v in vars(args).items() if k.startswith("p_")}
    summary = stage(settings, threads=args.threads, gpus=getattr(args, "gpus", 1), nodes=getattr(args, "nodes", 1),
                    **ports)
    print(json.dumps(summary, default=str))
    return 0


def _read_yaml(path: str) -> dict:
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
    except FileNotFoundError:
        raise PseudomaskError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        raise PseudomaskError(f"{path}: malformed YAML: {e}") from None
    if not isinstance(data, dict):
        raise PseudomaskError(f"{path}: a config file is a mapping of sections, got {type(data).__name__}")
    return data


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The CLI; with `command` (the subcommand about to run), only that stage's options are built, so that a
    job imports its own stage's settings module and not every stage's (about half a second less per job)."""
    parser = argparse.ArgumentParser(prog="pseudomask", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"pseudomask {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for stage in STAGES.values():
        if command is None or stage.command == command:
            add_stage_parser(sub, stage)
        else:
            sub.add_parser(stage.command, help=stage.help)
    commands.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv[0] if argv and not argv[0].startswith("-") else None).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PseudomaskError as e:
        print(f"pseudomask {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
