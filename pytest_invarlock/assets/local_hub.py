"""A local Hugging Face hub on loopback: the miniatures and a WikiText-2-shaped dataset under their real ids.

The GPU suites download hub checkpoints and InvarLock's WikiText-2 windows; no machine here reaches a hub. This
module serves the same repositories from this machine with olah (a maintained, hub-compatible mirror server):
each repository is a git repository in olah's mirror layout (`mirrors/{models,datasets}/ORG/NAME`), committed
with fixed authors and dates, so a repo's commit hash is fixed by its files. `HF_ENDPOINT` pointed at the
server makes the real `huggingface_hub` and `datasets` clients (and InvarLock's own provider) download from it.

- models: every miniature (`miniatures`), under its catalogue repo id;
- datasets/Salesforce/wikitext: config `wikitext-2-raw-v1` laid out as the hub's (parquet shards per split,
  the card's `configs:` block), text from the KJV held-out chapters in WikiText's raw form (` = Heading = `
  lines, paragraphs, blank lines): what `invarlock.eval.data_providers.WikiText2Provider` loads.

olah answers versioned metadata (`/api/models/ID/revision/REV`) from the mirrors; in offline mode it answers
unversioned metadata (`/api/models/ID`, `HfApi().model_info`) from its revision index, which `LocalHub`
writes at start-up from the mirrors' own answers. Downloads are counted from olah's access log.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from pytest_invarlock.assets import miniatures as mini
from pytest_invarlock.assets import tiny_model as tm

WIKITEXT_REPO, WIKITEXT_CONFIG = "Salesforce/wikitext", "wikitext-2-raw-v1"  # what InvarLock 0.12.1's provider loads
DATASET_VERSION = 1
PARAGRAPH_VERSES = 6  # ~200 tokens: full 128-token windows, as WikiText-2's paragraphs fill most windows
COMMIT_ENV = {
    "GIT_AUTHOR_NAME": "pytest-invarlock",
    "GIT_AUTHOR_EMAIL": "rehearsal@pytest-invarlock.invalid",
    "GIT_AUTHOR_DATE": "2024-01-01T00:00:00+00:00",
    "GIT_COMMITTER_NAME": "pytest-invarlock",
    "GIT_COMMITTER_EMAIL": "rehearsal@pytest-invarlock.invalid",
    "GIT_COMMITTER_DATE": "2024-01-01T00:00:00+00:00",
}
_DOWNLOAD = re.compile(r'"GET (/\S+/resolve/\S+) HTTP/[\d.]+" 200')
START_TIMEOUT_S = 60.0


# ---------------------------------------------------------------- repositories


def mirror_root(miniatures_root: Path) -> Path:
    return miniatures_root / "mirrors"


def build_mirrors(built: Sequence[mini.BuiltMiniature]) -> Path:
    """Git repositories (olah's mirror layout) of the built miniatures and of the WikiText-2 dataset; cached."""
    roots = {b.directory.parent for b in built}
    if len(roots) != 1:
        raise ValueError(f"miniatures from several cache roots {sorted(roots)}; build them into one cache")
    root = mirror_root(roots.pop())
    for item in built:
        _git_repository(
            root / "models" / item.spec.repo_id, item.directory, f"Upload {item.spec.name}", leave_out=[mini.BUILD_INFO]
        )
    _dataset_repository(root / "datasets" / WIKITEXT_REPO)
    return root


def _git_repository(path: Path, source: Path, message: str, *, leave_out: Sequence[str] = ()) -> str:
    """A one-commit git repository at `path` of the files under `source` (kept when it exists); its commit hash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if not (path / ".git").is_dir():
            staging = path.with_name(f".staging-{path.name}-{os.getpid()}")
            shutil.rmtree(staging, ignore_errors=True)
            try:
                shutil.copytree(source, staging, ignore=shutil.ignore_patterns(*leave_out))
                _git(staging, "init", "-q", "-b", "main")
                _git(staging, "add", "-A")
                _git(staging, "commit", "-q", "-m", message)
                staging.rename(path)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return _git(path, "rev-parse", "HEAD").strip()


def _git(cwd: Path, *args: str) -> str:
    env = {**os.environ, **COMMIT_ENV, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run(
        ["git", "-c", "commit.gpgsign=false", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout


def wikitext_rows(chapters: Sequence[Sequence[str]]) -> list[str]:
    """WikiText's raw line format: a ` = Chapter N = ` heading, then paragraphs, each line followed by a blank one.

    Headings are shorter than the 20 characters InvarLock's provider keeps, so its windows are paragraphs.
    """
    rows: list[str] = []
    for number, verses in enumerate(chapters, start=1):
        rows += ["", f" = Chapter {number} = \n", ""]
        for start in range(0, len(verses), PARAGRAPH_VERSES):
            rows += [" " + " ".join(verses[start : start + PARAGRAPH_VERSES]) + " \n", ""]
    return rows


def _dataset_repository(path: Path) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if (path / ".git").is_dir():
        return _git(path, "rev-parse", "HEAD").strip()
    params = tm.TinyBuildParams()
    train, heldout = tm.split_chapters(tm.load_chapters(params.chapter_limit), params)
    splits = {
        "train": train[:600],
        "validation": heldout[0::2],
        "test": heldout[1::2],
    }
    staging = path.with_name(f".files-{path.name}-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / WIKITEXT_CONFIG).mkdir(parents=True)
    try:
        for split, chapters in splits.items():
            table = pa.table({"text": wikitext_rows(chapters)})
            pq.write_table(table, staging / WIKITEXT_CONFIG / f"{split}-00000-of-00001.parquet")
        (staging / "README.md").write_text(_dataset_card(), encoding="utf-8")
        return _git_repository(path, staging, f"Upload {WIKITEXT_CONFIG} (KJV text, dataset version {DATASET_VERSION})")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _dataset_card() -> str:
    return (
        "---\nlicense: cc-by-sa-3.0\nconfigs:\n"
        f"- config_name: {WIKITEXT_CONFIG}\n  data_files:\n"
        + "".join(f"  - split: {s}\n    path: {WIKITEXT_CONFIG}/{s}-*\n" for s in ("test", "train", "validation"))
        + f"dataset_info:\n  config_name: {WIKITEXT_CONFIG}\n  features:\n  - name: text\n    dtype: string\n---\n"
        "# wikitext (rehearsal stand-in)\n\nWikiText-2's layout and line format with King James Bible text "
        "(public domain), served by pytest-invarlock's local hub.\n"
    )


# ---------------------------------------------------------------- server


@dataclass
class LocalHub:
    """olah serving `mirrors` on 127.0.0.1; use as a context manager. `endpoint` is what HF_ENDPOINT takes."""

    mirrors: Path
    workdir: Path
    port: int = 0
    endpoint: str = ""
    process: subprocess.Popen[bytes] | None = None
    repos: dict[str, str] = field(default_factory=dict)  # "models/ID" or "datasets/ID" -> commit

    @property
    def log_file(self) -> Path:
        return self.workdir / "olah.log"

    def __enter__(self) -> LocalHub:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        cache = self.workdir / "olah-cache"
        shutil.rmtree(cache, ignore_errors=True)
        config = self.workdir / "olah.toml"
        config.write_text(
            "[basic]\n"
            f'host = "127.0.0.1"\nport = {self.port}\nrepos-path = "{cache}"\nmirrors-path = ["{self.mirrors}"]\n'
            # no upstream: an address nothing listens on (olah's offline mode never asks it)
            'hf-scheme = "http"\nhf-netloc = "127.0.0.1:9"\nhf-lfs-netloc = "127.0.0.1:9"\n'
            "[accessibility]\noffline = true\n",
            encoding="utf-8",
        )
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "olah.server", "--config", str(config), "--log-path", str(self.workdir / "olah-logs")],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env={k: v for k, v in os.environ.items() if not k.startswith("HF_")},  # the server is the hub
            )
        try:
            with _local_connections_allowed():
                self._wait_until_serving()
                self._index_revisions(cache)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def environment(self) -> dict[str, str]:
        """What a client process needs to download from this hub."""
        return {"HF_ENDPOINT": self.endpoint, "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1"}

    def downloads(self) -> list[str]:
        """Files served so far (one `GET .../resolve/REVISION/FILE` with status 200 each), in order."""
        text = self.log_file.read_text(encoding="utf-8", errors="replace") if self.log_file.is_file() else ""
        return _DOWNLOAD.findall(text)

    def _wait_until_serving(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"olah exited with {self.process.returncode} at start-up; see {self.log_file}")
            with contextlib.suppress(OSError):
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            time.sleep(0.2)
        raise RuntimeError(f"olah did not listen on port {self.port} within {START_TIMEOUT_S:g} s; see {self.log_file}")

    def _index_revisions(self, cache: Path) -> None:
        """olah's offline revision index (`api/TYPE/ID/revision/SHA/meta_head.json`), from each mirror's answer."""
        for kind in ("models", "datasets"):
            for git_dir in sorted((self.mirrors / kind).glob("*/*/.git")):
                repo_id = git_dir.parent.relative_to(self.mirrors / kind).as_posix()
                meta = self._get_json(f"/api/{kind}/{repo_id}/revision/main")
                target = cache / "api" / kind / repo_id / "revision" / str(meta["sha"]) / "meta_head.json"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(json.dumps(meta), encoding="utf-8")
                self.repos[f"{kind}/{repo_id}"] = str(meta["sha"])

    def _get_json(self, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(self.endpoint + path, timeout=30) as response:  # loopback only
            data: dict[str, Any] = json.loads(response.read())
            return data


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def serving(names: Sequence[str] | None, workdir: Path, cache_dir: Path | None = None) -> Iterator[LocalHub]:
    """Build (or reuse) the named miniatures and their mirrors, and serve them until the block ends."""
    built = mini.build_miniatures(names, cache_dir)
    with LocalHub(build_mirrors(built), workdir) as hub:
        yield hub


def _local_connections_allowed() -> contextlib.AbstractContextManager[None]:
    """Once imported anywhere in a process, InvarLock guards every socket of it (a test session that also certified
    in-process, say); the hub on 127.0.0.1 is ours to reach, so lift the guard for our own probes only."""
    security = sys.modules.get("invarlock.security")
    return security.temporarily_allow_network() if security is not None else contextlib.nullcontext()
