"""`python -m pytest_invarlock COMMAND`: work on a run directory after (or beside) a pytest session.

Each command lives in its own module, named here lazily so `--help` imports nothing heavy: the
module defines `add_arguments(parser)` and `run(args) -> int` (the exit status).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# command -> (one-line help, module that implements it)
COMMANDS: dict[str, tuple[str, str]] = {
    "report": (
        "compile every record of a run directory (every node of a campaign) into the verdict, CSVs and "
        "reports/report.html; exit 0 only when the campaign is complete",
        "pytest_invarlock.report.command",
    ),
    "node-check": (
        "check that this host can take part in a campaign on RUN_DIR (packages, a writable run directory with locks, "
        "the marker written at submission)",
        "pytest_invarlock.node_check",
    ),
    "pack": ("write a signed evidence pack (DIR and DIR.tar.gz) from a finished run directory", "pytest_invarlock.evidence.pack"),
    "verify": (
        "verify an evidence pack: signature (with --public-key), every checksum, the Phase 0 block",
        "pytest_invarlock.evidence.verify",
    ),
    "keygen": ("write a new Ed25519 keypair (KEY.pem, KEY.pem.pub) for signing evidence packs", "pytest_invarlock.evidence.keys"),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_invarlock", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, module_name) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(module_name=module_name)
        if name in (argv if argv is not None else sys.argv[1:])[:1]:
            importlib.import_module(module_name).add_arguments(sub)
    args = parser.parse_args(argv)
    return int(importlib.import_module(args.module_name).run(args))
