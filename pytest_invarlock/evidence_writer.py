"""`--evidence-pack DIR`: pack the run directory at the end of a validation session.

Its own plugin object, registered on the controller only when the option is given (as pytest's
junitxml and stepwise register themselves). It packs in `pytest_sessionfinish`, after the verdict
reporter wrote the verdict files there, so the pack exists with `-p no:terminal` too; the terminal
summary only prints what was written.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from pytest_invarlock.terminal import VerdictReporter

PLUGIN_NAME = "invarlock-evidence-pack"


def add_options(group: pytest.OptionGroup) -> None:
    group.addoption(
        "--evidence-pack",
        dest="invarlock_evidence_pack",
        default=None,
        metavar="DIR",
        help="at the end of the run, write a signed evidence pack to DIR and DIR.tar.gz (see --signing-key)",
    )
    group.addoption(
        "--signing-key",
        dest="invarlock_signing_key",
        default=None,
        metavar="FILE",
        help="Ed25519 private key (PEM) that signs the evidence pack's manifest; make one with "
        "`python -m pytest_invarlock keygen`",
    )


def register(config: pytest.Config, verdict: VerdictReporter) -> None:
    target = config.getoption("invarlock_evidence_pack", None)
    if target:
        base = Path(config.invocation_params.dir)
        key = config.getoption("invarlock_signing_key", None)
        writer = EvidencePackWriter(verdict, base / Path(target).expanduser(), base / Path(key).expanduser() if key else None)
        config.pluginmanager.register(writer, PLUGIN_NAME)


class EvidencePackWriter:
    def __init__(self, verdict: VerdictReporter, target: Path, signing_key: Path | None) -> None:
        self.verdict, self.target, self.signing_key = verdict, target, signing_key
        self.line: tuple[str, dict[str, bool]] | None = None  # what the summary prints, with its colour

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self) -> None:
        from pytest_invarlock.evidence.pack import PackError, build_pack, describe

        written = self.verdict.written
        if written is None or written.compiled is None:
            self.line = ("evidence pack not written: this session compiled no verdict", {"red": True})
            return
        try:
            pack = build_pack(self.verdict.state.run_dir, self.target, signing_key=self.signing_key)
        except (PackError, OSError) as exc:
            self.line = (f"evidence pack not written: {exc}", {"red": True})
            return
        self.line = (describe(pack), {"green": pack.signed, "yellow": not pack.signed})

    @pytest.hookimpl(wrapper=True)
    def pytest_terminal_summary(self, terminalreporter: Any) -> Generator[None]:
        """Printed after the verdict block (a wrapper's code after `yield` runs after every implementation)."""
        yield
        if self.line is not None:
            terminalreporter.write_line(self.line[0], **self.line[1])
