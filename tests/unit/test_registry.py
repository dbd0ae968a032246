"""The model registry on a local directory: atomic publish, checksums, aliases, lineage lookups."""

from __future__ import annotations

import json

import pytest

from kubeloop.registry import (
    ChecksumMismatch,
    LocalStore,
    ModelRegistry,
    RegistryError,
    VersionNotFound,
)

MODEL = "fraud-detector"


class CrashBeforeManifest(LocalStore):
    """A real directory store whose process 'dies' just before the manifest is written."""

    def put(self, key: str, data: bytes) -> None:
        if key.endswith("MANIFEST.json"):
            raise KeyboardInterrupt("killed before the manifest")
        super().put(key, data)


@pytest.fixture
def model_dir(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.pt").write_bytes(b"\x00weights" * 100)
    (folder / "model.json").write_text(json.dumps({"features": ["amount"]}))
    (folder / "sub").mkdir()
    (folder / "sub" / "extra.txt").write_text("nested files keep their relative path")
    return folder


def _lineage(run_id: str) -> dict:
    return {"pipeline_run_id": run_id, "data_hash": "ab" * 32, "row_count": 10}


def test_publish_creates_immutable_numbered_versions(tmp_path, model_dir):
    reg = ModelRegistry(str(tmp_path / "reg"))
    v1 = reg.publish(MODEL, model_dir, metrics={"roc_auc": 0.9}, lineage=_lineage("run-1"))
    v2 = reg.publish(MODEL, model_dir, lineage=_lineage("run-2"))
    assert (v1.version, v2.version) == ("v1", "v2")
    assert v1.checksum == v2.checksum  # same content, same checksum
    assert set(v1.files) == {"model.pt", "model.json", "sub/extra.txt"}
    assert reg.get(MODEL).version == "v2" and reg.get(MODEL, "1").metrics == {"roc_auc": 0.9}
    assert [v.version for v in reg.list_versions(MODEL)] == ["v1", "v2"]


def test_a_publish_that_crashes_before_the_manifest_leaves_no_visible_version(tmp_path, model_dir):
    root = tmp_path / "reg"
    crashing = ModelRegistry(store=CrashBeforeManifest(root))
    with pytest.raises(KeyboardInterrupt):
        crashing.publish(MODEL, model_dir)
    assert (root / MODEL / "versions" / "v1" / "model.pt").exists()  # files were uploaded...
    reg = ModelRegistry(str(root))
    assert reg.list_versions(MODEL) == []  # ...but no version is visible
    with pytest.raises(VersionNotFound):
        reg.get(MODEL, "latest")
    with pytest.raises(VersionNotFound):
        reg.get(MODEL, "v1")
    # The next publish does not reuse the half-written slot.
    assert reg.publish(MODEL, model_dir).version == "v2"
    assert [v.version for v in reg.list_versions(MODEL)] == ["v2"]


def test_checksum_mismatch_is_detected(tmp_path, model_dir):
    reg = ModelRegistry(str(tmp_path / "reg"))
    reg.publish(MODEL, model_dir)
    assert reg.read_file(MODEL, "v1", "model.pt") == (model_dir / "model.pt").read_bytes()
    (tmp_path / "reg" / MODEL / "versions" / "v1" / "model.pt").write_bytes(b"tampered")
    with pytest.raises(ChecksumMismatch, match="model.pt: sha256 does not match"):
        reg.read_file(MODEL, "v1", "model.pt")
    with pytest.raises(ChecksumMismatch):
        reg.download(MODEL, "v1", tmp_path / "out")


def test_download_verifies_and_copies_every_file(tmp_path, model_dir):
    reg = ModelRegistry(str(tmp_path / "reg"))
    reg.publish(MODEL, model_dir)
    version, dest = reg.download(MODEL, "latest", tmp_path / "out")
    assert (dest / "sub" / "extra.txt").read_text() == "nested files keep their relative path"
    assert json.loads((dest / "MANIFEST.json").read_text())["checksum"] == version.checksum


def test_download_of_named_files_reads_only_those(tmp_path, model_dir):
    reg = ModelRegistry(str(tmp_path / "reg"))
    reg.publish(MODEL, model_dir)
    # a file left out is never read: damaging it does not stop the download
    (tmp_path / "reg" / MODEL / "versions" / "v1" / "sub" / "extra.txt").write_text("damaged")
    version, dest = reg.download(MODEL, "v1", tmp_path / "out", files=["model.pt", "model.json"])
    assert sorted(p.name for p in dest.iterdir()) == ["model.json", "model.pt"]
    assert (dest / "model.pt").read_bytes() == (model_dir / "model.pt").read_bytes()
    assert version.version == "v1"
    with pytest.raises(ChecksumMismatch, match="extra.txt"):
        reg.download(MODEL, "v1", tmp_path / "all")
    with pytest.raises(RegistryError, match="has no file 'weights.bin'"):
        reg.download(MODEL, "v1", tmp_path / "other", files=["weights.bin"])
    (tmp_path / "reg" / MODEL / "versions" / "v1" / "model.json").write_text("{}")
    with pytest.raises(ChecksumMismatch, match="model.json"):
        reg.download(MODEL, "v1", tmp_path / "again", files=["model.json"])


def test_aliases(tmp_path, model_dir):
    reg = ModelRegistry(str(tmp_path / "reg"))
    reg.publish(MODEL, model_dir)
    reg.publish(MODEL, model_dir)
    assert reg.get_alias(MODEL, "champion") is None
    reg.set_alias(MODEL, "champion", "v1")
    assert reg.resolve(MODEL, "champion") == "v1" and reg.get(MODEL, "champion").version == "v1"
    reg.set_alias(MODEL, "champion", "v2")
    assert reg.resolve(MODEL, "champion") == "v2"
    for reserved in ("latest", "v3"):
        with pytest.raises(RegistryError, match="reserved"):
            reg.set_alias(MODEL, reserved, "v1")
    with pytest.raises(VersionNotFound):
        reg.set_alias(MODEL, "challenger", "v9")
    with pytest.raises(VersionNotFound, match="no version or alias 'nobody'"):
        reg.resolve(MODEL, "nobody")


def test_find_by_run_id(tmp_path, model_dir):
    reg = ModelRegistry(str(tmp_path / "reg"))
    reg.publish(MODEL, model_dir, lineage=_lineage("run-a"))
    reg.publish(MODEL, model_dir, lineage=_lineage("run-b"))
    assert reg.find_by_run_id(MODEL, "run-a").version == "v1"
    assert reg.find_by_run_id(MODEL, "run-b").lineage["data_hash"] == "ab" * 32
    assert reg.find_by_run_id(MODEL, "run-c") is None


def test_empty_folder_and_escaping_keys_are_refused(tmp_path):
    reg = ModelRegistry(str(tmp_path / "reg"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(RegistryError, match="nothing to publish"):
        reg.publish(MODEL, tmp_path / "empty")
    with pytest.raises(RegistryError, match="escapes the registry root"):
        reg.store.put("../outside", b"x")
