"""dicom_node.scp.chunked: the one module touching pynetdicom internals refuses an unknown pynetdicom."""

from __future__ import annotations

from pathlib import Path

import pynetdicom
import pytest

from dicom_node.scp import chunked
from dicom_node.scp.receive import Receiver
from dicom_node.settings import NodeSettings
from dicom_node.storage.journal import Journal
from dicom_node.storage.spool import Spool

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parent.parent


def test_pyproject_pins_exactly_the_pynetdicom_the_switch_is_written_for() -> None:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert [d.split("#")[0].strip() for d in deps if d.startswith("pynetdicom")] == [
        f"pynetdicom=={chunked.PYNETDICOM_VERSION}"]  # fmt: skip
    assert pynetdicom.__version__ == chunked.PYNETDICOM_VERSION


def test_installed_pynetdicom_passes_the_checks_and_the_loopback_self_test() -> None:
    chunked.ensure_installed()
    chunked.check_pynetdicom()
    chunked.self_test()  # a real C-STORE over 127.0.0.1 into a staged file


def test_another_version_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pynetdicom, "__version__", "3.0.5")
    with pytest.raises(chunked.ChunkedReceiveUnavailable, match="pynetdicom 3.0.5 is installed"):
        chunked.check_pynetdicom()


def test_changed_code_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    func, fragments = chunked.EXPECTED_SOURCE["the C-STORE SCP closes and unlinks the file after the handler"]
    changed = {**chunked.EXPECTED_SOURCE,
               "the C-STORE SCP closes and unlinks the file after the handler": (func, (*fragments, "shutil.rmtree(x)"))}
    monkeypatch.setattr(chunked, "EXPECTED_SOURCE", changed)
    with pytest.raises(chunked.ChunkedReceiveUnavailable, match="shutil.rmtree"):
        chunked.check_pynetdicom()


def _receiver(tmp_path: Path, chunked_receive: bool) -> Receiver:
    settings = NodeSettings(port=0, spool_dir=tmp_path / "spool", disk_reserve_mb=0, http_port=0,
                            chunked_receive=chunked_receive)  # fmt: skip
    spool = Spool(settings.spool_dir, reserve_bytes=0)
    return Receiver(settings, spool, Journal(settings.journal_path))


def test_the_scp_refuses_to_start_on_an_unknown_pynetdicom_unless_chunked_receive_is_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chunked, "_installed", False)  # as in a fresh process
    monkeypatch.setattr(pynetdicom, "__version__", "3.1.0")
    refused = _receiver(tmp_path / "a", chunked_receive=True)
    with pytest.raises(chunked.ChunkedReceiveUnavailable):
        refused.start()
    in_memory = _receiver(tmp_path / "b", chunked_receive=False)
    try:
        assert in_memory.start() > 0
    finally:
        in_memory.stop(5)
