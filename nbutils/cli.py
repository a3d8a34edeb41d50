"""``python -m nbutils <command>``: every stage of the notebooks, from a shell.

Each command lives in its stage module, which provides ``add_cli(parser)`` and
``run_cli(args) -> dict | None``. When ``run_cli`` returns a dict, it is printed as the last
line of stdout as one JSON object (the contract outside tests rely on; see docs/architecture.md).
A module may also provide ``exit_status(summary) -> int`` (the doctor: 1 when a check failed).
Modules are imported only for the command that runs, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from nbutils.core.errors import UserError

COMMANDS = {
    "tokenize": ("nbutils.tokenize.stage", "Encode ZIP batches of audio into EnCodec token shards."),
    "train": ("nbutils.train.stage", "LoRA-fine-tune MusicGen on token shards; re-running resumes."),
    "generate": ("nbutils.generate.stage", "Generate music from text with the base model or a LoRA adapter."),
    "evaluate": ("nbutils.evaluate.stage", "Compare base vs LoRA with CLAP scores, a table and a plot."),
    "demo": ("nbutils.colab.demo", "Run the whole pipeline offline on generated music by executing the notebooks."),
    "doctor": ("nbutils.colab.doctor", "Self-check this runtime (GPU, disk, encoder, training, resume, generation) "
                                       "in about two minutes; attach its report to bug reports."),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nbutils", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:  # import only the module that will run
            importlib.import_module(module_name).add_cli(sub_parser)
    return parser


def _command_of(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command_of(argv)
    if command not in COMMANDS:
        command = None
    parser = build_parser(command)
    args = parser.parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        summary = module.run_cli(args)
    except UserError as err:
        print(f"\nError: {err}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("\nInterrupted.", file=sys.stderr, flush=True)
        return 130
    if summary is not None:
        sys.stderr.flush()
        print(json.dumps(summary, default=str), flush=True)
    # A command whose summary can report a failure (the doctor's verdict) says so in the exit status.
    exit_status = getattr(module, "exit_status", None)
    return exit_status(summary) if exit_status and summary is not None else 0


if __name__ == "__main__":
    raise SystemExit(main())
