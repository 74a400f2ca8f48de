"""TRUST against the real guest init: the box's CA into the guest's root (guest/init/trust.c),
including from a hostile image (a FIFO or a folder where the trust store should be, an
oversized store). Paths are this host's temporary folders: the payload names them."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from a3s_box.errors import GuestError
from a3s_box.guest import protocol as p
from tests.guest.conftest import AGENT_CONFIG

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.guest.conftest import LocalGuest

CA = b"-----BEGIN CERTIFICATE-----\nMIIBbox\n-----END CERTIFICATE-----\n"
STORE = b"-----BEGIN CERTIFICATE-----\nMIIBimage1\n-----END CERTIFICATE-----\n" * 3000  # ~170 KiB


def _paths(root: Path) -> tuple[Path, Path, Path]:
    (root / ".a3s").mkdir()
    (root / "certs").mkdir()
    return root / ".a3s" / "box-ca.pem", root / ".a3s" / "ca-bundle.pem", root / "certs" / "store.crt"


def _sparse(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)


@pytest.fixture
def fresh(make_guest: Callable[[], LocalGuest]) -> LocalGuest:
    g = make_guest()
    g.client.hello(10)
    return g


@pytest.mark.parametrize("store", [STORE, STORE.rstrip(b"\n"), STORE + b"\n\n", b""])
def test_the_ca_alone_in_a_bundle_and_appended_to_the_store(fresh: LocalGuest, tmp_path: Path,
                                                            store: bytes) -> None:
    cert, bundle, store_path = _paths(tmp_path)
    store_path.write_bytes(store)
    fresh.client.trust(CA, str(cert), str(bundle), str(store_path))
    expected = (store.rstrip(b"\n") + b"\n" if store.strip() else b"") + CA
    assert cert.read_bytes() == CA
    assert bundle.read_bytes() == expected
    assert store_path.read_bytes() == expected
    assert sorted(p.name for p in store_path.parent.iterdir()) == ["store.crt"]  # no temporary left


def test_an_image_without_a_store_gets_the_ca_as_its_bundle(fresh: LocalGuest, tmp_path: Path) -> None:
    cert, bundle, store_path = _paths(tmp_path)
    fresh.client.trust(CA, str(cert), str(bundle), str(store_path))
    assert cert.read_bytes() == CA and bundle.read_bytes() == CA
    assert not store_path.exists()  # none made where the image had none


def test_a_symlinked_store_is_read_through_and_replaced_by_the_bundle(fresh: LocalGuest, tmp_path: Path) -> None:
    cert, bundle, store_path = _paths(tmp_path)
    (tmp_path / "real.crt").write_bytes(STORE)
    store_path.symlink_to(tmp_path / "real.crt")
    fresh.client.trust(CA, str(cert), str(bundle), str(store_path))
    assert store_path.read_bytes() == STORE + CA and not store_path.is_symlink()
    assert (tmp_path / "real.crt").read_bytes() == STORE  # what the link named is left alone


@pytest.mark.parametrize("make, said", [
    (lambda path: os.mkfifo(path), "Invalid argument"),  # would block a reader forever
    (lambda path: path.mkdir(), "Invalid argument"),
    (lambda path: _sparse(path, (16 << 20) + 1), "too large"),
])
def test_a_hostile_store_is_refused_naming_it_and_nothing_is_written(fresh: LocalGuest, tmp_path: Path,
                                                                     make: Callable[[Path], object],
                                                                     said: str) -> None:
    cert, bundle, store_path = _paths(tmp_path)
    make(store_path)
    with pytest.raises(GuestError, match=f"installing the box's CA: {store_path}: .*{said}"):
        fresh.client.trust(CA, str(cert), str(bundle), str(store_path))
    assert not cert.exists() and not bundle.exists()
    assert fresh.client.ping() >= 0  # the guest serves on


def test_bad_payloads_and_after_configure_are_refused(fresh: LocalGuest, tmp_path: Path) -> None:
    cert, bundle, store_path = _paths(tmp_path)
    for args in ((b"", str(cert), str(bundle), str(store_path)),
                 (CA, "relative", str(bundle), str(store_path))):
        with pytest.raises(GuestError, match="bad TRUST payload"):
            fresh.client.trust(*args)
    res = fresh.client._ctl_request(p.encode(p.MsgType.TRUST, 0, b"\x00\x00\x00\x09short"), 5, "trust")
    assert res.errno != 0
    fresh.client.configure(AGENT_CONFIG, 10)
    with pytest.raises(GuestError, match="before CONFIG"):
        fresh.client.trust(CA, str(cert), str(bundle), str(store_path))
