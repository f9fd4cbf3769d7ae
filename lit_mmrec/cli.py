"""The ``lit_mmrec`` command: one entry point for every subcommand.

``fit`` / ``validate`` / ``test`` / ``predict`` are LightningCLI's (:mod:`lit_mmrec.lightning_cli`);
``sweep``, ``compare``, ``report``, ``prepare`` and ``features`` are lit_mmrec's own tools, imported only when
called.
Bad input data and config errors end with one message and exit status 2, without a traceback
(``LIT_MMREC_DEBUG=1`` shows it); an unknown option gets a "did you mean" line instead of the whole usage.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import logging
import os
import re
import sys
from collections.abc import Callable

SUBCOMMANDS: dict[str, str] = {
    "fit": "train a model, pick the best epoch by validation, then test it",
    "validate": "evaluate a checkpoint on the validation split",
    "test": "evaluate a checkpoint on the test split",
    "predict": "write every user's top-K recommendations",
    "sweep": "run a W&B sweep file as an Optuna study, without a W&B server",
    "compare": "compare two trained runs user by user (paired differences and p-values)",
    "report": "train a study file's missing runs and write its results tables, paired tests and plots",
    "prepare": "turn raw interactions (Amazon reviews, CSV/TSV) into an MMRec-format dataset",
    "features": "encode item text and images into <modality>_feat.npy files, in item-id order",
}
# subcommands that are not LightningCLI's: module and function that take the remaining arguments
_TOOLS = {"sweep": ("lit_mmrec.sweep", "main"), "compare": ("lit_mmrec.compare", "main"),
          "report": ("lit_mmrec.report", "main"), "prepare": ("lit_mmrec.data.prepare", "main"),
          "features": ("lit_mmrec.data.features", "main")}


def usage() -> str:
    """The top-level help: every subcommand with a line each."""
    width = max(map(len, SUBCOMMANDS))
    lines = ["usage: lit_mmrec <subcommand> [options]", "", "subcommands:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in SUBCOMMANDS.items()]
    lines += ["", "`lit_mmrec <subcommand> --help` lists a subcommand's options;",
              "`lit_mmrec fit --model.help lit_mmrec.models.DiffCL` describes a model's options."]
    return "\n".join(lines)


def _option_names(cls: type) -> list[str]:
    try:
        return [name for name in inspect.signature(cls.__init__).parameters if name not in ("self", "args", "kwargs")]
    except (TypeError, ValueError):
        return []


def _sections() -> dict[str, type]:
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import EarlyStopping

    from lit_mmrec.data import RecDataModule
    from lit_mmrec.metrics import BestAndLastCheckpoint, RankingEvaluator, TopKPredictionWriter

    return {"trainer": Trainer, "data": RecDataModule, "evaluation": RankingEvaluator,
            "checkpoint": BestAndLastCheckpoint, "early_stopping": EarlyStopping,
            "prediction_writer": TopKPredictionWriter}


def suggestion(message: str) -> str | None:
    """A "did you mean" line for an option the parser rejected, from the option names of the class that
    rejected it (a model's or the data source's ``__init__``) or of the config section it is under."""
    rejected = re.search(r"class_path '([\w.]+)'.*?Option '(\w+)' is not accepted", message, re.S)
    if rejected:
        module, _, name = rejected.group(1).rpartition(".")
        try:
            names = _option_names(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            names = []
        close = difflib.get_close_matches(rejected.group(2), names, n=1)
        if close:
            return f"did you mean `{close[0]}` (an option of {name})?"
        return None
    unknown = re.search(r"unrecognized arguments: (\S+)", message, re.I)
    if not unknown:
        return None
    section, _, name = unknown.group(1).lstrip("-").split("=", 1)[0].partition(".")
    sections = _sections()
    if section in sections and name:
        close = difflib.get_close_matches(name, _option_names(sections[section]), n=1)
        return f"did you mean `--{section}.{close[0]}`?" if close else None
    if not name:
        close = difflib.get_close_matches(section, [*sections, "model", "config", "seed_everything",
                                                    "ckpt_path", "test_after_fit"], n=1)
        return f"did you mean `--{close[0]}`?" if close else None
    return None


def _short(message: str) -> str:
    """The parser's message without jsonargparse's nested restatements of every alternative type."""
    lines = [line for line in message.splitlines() if line.strip()]
    keep = [line for line in lines if "Given value" not in line and "Expected a <class" not in line]
    return "\n".join(keep[:12])


def _debug() -> bool:
    return os.environ.get("LIT_MMREC_DEBUG", "0") not in ("", "0")


def _fail(message: str) -> None:
    print(f"lit_mmrec: error: {message}\n(set LIT_MMREC_DEBUG=1 for the traceback)", file=sys.stderr)
    raise SystemExit(2)


def _run_lightning(argv: list[str]) -> None:
    from jsonargparse import ArgumentError

    from lit_mmrec.data.interactions import DataFormatError
    from lit_mmrec.lightning_cli import build_cli
    from lit_mmrec.runtime import release_process_group

    try:
        build_cli(argv, parser_kwargs={"exit_on_error": _debug()})
    except DataFormatError as error:  # bad input data: the message names the file, the field and the fix
        if _debug():
            raise
        _fail(str(error))
    except ArgumentError as error:  # a config or command-line error
        hint = suggestion(str(error))
        _fail(_short(str(error)) + (f"\n{hint}" if hint else "")
              + f"\n`lit_mmrec {argv[0]} --help` lists the options")
    release_process_group()  # DDP on CPU: gloo must not outlive the interpreter (see the function)


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``lit_mmrec`` console script."""
    from lit_mmrec.runtime import keep_freed_memory_for_reuse, quiet_third_party_notices

    logging.basicConfig(level=os.environ.get("LIT_MMREC_LOG_LEVEL", "INFO"),
                        format="%(levelname)s %(name)s: %(message)s")
    quiet_third_party_notices()
    keep_freed_memory_for_reuse()
    argv = sys.argv[1:] if args is None else list(args)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return
    command = argv[0]
    if command in _TOOLS:
        module, function = _TOOLS[command]
        tool: Callable[[list[str]], None] = getattr(importlib.import_module(module), function)
        tool(argv[1:])
        return
    if command not in SUBCOMMANDS:
        close = difflib.get_close_matches(command, SUBCOMMANDS, n=1)
        _fail(f"unknown subcommand {command!r}" + (f"; did you mean `{close[0]}`?" if close else "")
              + "\n" + usage())
    _run_lightning(argv)


if __name__ == "__main__":
    main()
