"""One image store for every engine: the store holds the layers by hard link, each engine's
data root links to the store's layer folders (no per-site copy on disk, a few syscalls per
layer), the metadata each engine rewrites is its own copy, removing an engine's data root
leaves the store whole, and nothing is seeded over an engine's data."""

from __future__ import annotations

import os
import shutil

import pytest

from pytest_overlay.testbeds import engines

LAYER = "overlay2/0f3c/diff/usr/bin/iperf3"
METADATA = "image/overlay2/repositories.json"


@pytest.fixture
def roots(tmp_path, monkeypatch):
    monkeypatch.setattr(engines, "DATA_ROOT", tmp_path / "data")
    monkeypatch.setattr(engines, "CACHE", tmp_path / "cache")
    (tmp_path / "cache").mkdir()
    return tmp_path


def engine(site: str) -> engines.Engine:
    return engines.Engine(site, "", "198.18.0.2", "run1", engines.DATA_ROOT / "state" / site)


def imported(e: engines.Engine) -> None:
    """A data root as dockerd leaves it right after importing the image (and halting)."""
    for path, text in ((LAYER, "ELF"), ("overlay2/0f3c/link", "ABC"), ("overlay2/l/ABC", None),
                       (METADATA, '{"Repositories": {}}'), ("network/files/local-kv.db", "x")):
        (e.data_root / path).parent.mkdir(parents=True, exist_ok=True)
        if text is None:
            (e.data_root / path).symlink_to("../0f3c/diff")  # overlay2's short name of a layer
        else:
            (e.data_root / path).write_text(text)


def test_engines_share_the_layers_and_own_their_metadata(roots):
    first = engine("A")
    imported(first)
    engines.keep_store(first, "tag1")
    store = engines.image_store("tag1")
    assert sorted(p.name for p in store.iterdir()) == ["image", "overlay2"]  # no network db, no containers

    second = engine("B")
    assert engines.seed(second, store)
    layer, meta = second.data_root / LAYER, second.data_root / METADATA
    assert os.stat(layer).st_ino == os.stat(store / LAYER).st_ino == os.stat(first.data_root / LAYER).st_ino
    assert os.stat(layer).st_nlink == 2  # the first engine's and the store's: the others link to the folder
    assert (second.data_root / "overlay2/0f3c/diff").resolve() == (store / "overlay2/0f3c/diff").resolve()
    assert (second.data_root / "overlay2/l/ABC/usr/bin/iperf3").read_text() == "ELF"  # short names resolve
    assert not (second.data_root / "overlay2/0f3c/link").is_symlink()  # the layer's own metadata: a copy
    assert os.stat(meta).st_ino != os.stat(store / METADATA).st_ino
    meta.write_text("changed by engine B")
    assert (store / METADATA).read_text() == '{"Repositories": {}}'
    assert not list(second.data_root.parent.glob(".*seeding"))
    shutil.rmtree(second.data_root)  # as an engine's stop does
    assert (store / LAYER).read_text() == "ELF"


def test_nothing_is_seeded_over_an_engines_data_or_from_a_store_that_is_not_whole(roots):
    store = engines.image_store("tag1")
    assert not engines.seed(engine("A"), store)  # no store yet: the engine imports the image itself
    first = engine("A")
    imported(first)
    engines.keep_store(first, "tag1")
    assert not engines.seed(first, store)  # it has a data root already
    engines.keep_store(engine("C"), "tag2")  # an engine with nothing imported keeps no store
    assert not engines.image_store("tag2").exists()
