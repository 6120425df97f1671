"""The shipped tiny model: the bytes every machine evaluates, and docs/tiny-model.md's figures checked against them.

Torch-free (hashes and text), so it runs in the fast lane; tests/assets/test_tiny_model.py installs the
weights and measures the perplexity again.
"""

from __future__ import annotations

import re
from pathlib import Path

from pytest_invarlock.assets import tiny_model as tm

TINY_PAGE = Path(__file__).resolve().parents[2] / "docs" / "tiny-model.md"


def tiny_section() -> str:
    return TINY_PAGE.read_text(encoding="utf-8")


def test_shipped_weights_match_their_manifest() -> None:
    manifest = tm.shipped_manifest()
    assert tm.sha256_file(tm.shipped_dir() / tm.WEIGHTS_FILE) == manifest["weights_sha256"]
    assert all((tm.shipped_dir() / name).is_file() for name in tm.SHIPPED_FILES)
    assert tm.TinyBuildParams(**{**manifest["params"], "heldout_residues": (1, 3)}) == tm.TinyBuildParams()


def test_docs_state_the_shipped_hash_perplexity_and_size() -> None:
    manifest, section = tm.shipped_manifest(), tiny_section()
    hashes = set(re.findall(r"\b[0-9a-f]{64}\b", section))
    assert hashes == {manifest["weights_sha256"]}, "docs/tiny-model.md's hash is the shipped weights' sha256"
    assert f"held-out perplexity {manifest['heldout_perplexity']}" in section
    assert f"{manifest['parameters'] / 1e6:.2f} M parameters" in section


def test_the_asset_directory_name_follows_the_weights() -> None:
    params = tm.TinyBuildParams()
    assert tm.asset_name(params, "a" * 64) != tm.asset_name(params, "b" * 64) != tm.asset_name(params)


def test_train_says_whether_this_machine_reproduced_the_shipped_weights(tmp_path: Path) -> None:
    manifest = tm.shipped_manifest()

    def trained(sha: str) -> tm.TinyAssets:
        return tm.TinyAssets(tmp_path, tmp_path, tmp_path, tmp_path, (), sha, {})

    assert "bit for bit" in tm.trained_versus_shipped(trained(manifest["weights_sha256"]), manifest)
    other = tm.trained_versus_shipped(trained("0" * 64), manifest)
    assert "differ" in other and manifest["weights_sha256"] in other and "instruction set" in other
