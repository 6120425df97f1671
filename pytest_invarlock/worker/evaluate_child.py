"""`python -m pytest_invarlock.worker.evaluate_child evaluate ...`: InvarLock's CLI with an OOM watch.

The subprocess form of `certifier.certify` runs this instead of `python -m invarlock`: the same CLI
(argv and exit code unchanged), plus one line in the log when a torch.OutOfMemoryError was raised
anywhere during the evaluate, which InvarLock's own failure message does not say (see
`resources.OomWatch`).
"""

from __future__ import annotations

import runpy
import sys


def main() -> None:
    import torch  # noqa: F401 - the watch needs the error type; InvarLock imports torch anyway

    from pytest_invarlock.worker.resources import OOM_MARKER, OomWatch

    sys.argv = ["invarlock", *sys.argv[1:]]
    watch = OomWatch()
    try:
        with watch:
            runpy.run_module("invarlock", run_name="__main__", alter_sys=True)
    finally:
        if watch.seen:
            print(f"\n{OOM_MARKER}: {watch.seen[0]}", flush=True)


if __name__ == "__main__":
    main()
