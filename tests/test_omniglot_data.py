"""Tests of metajax.data.omniglot on the real data in ../shared/data (Lake et al., 2015)."""

from __future__ import annotations

import hashlib
import shutil
import zipfile

import numpy as np
import pytest

from metajax.data import omniglot
from metajax.data.paths import ENV_VAR, resolve_data_dir

DATA_DIR = resolve_data_dir()
OMNIGLOT_DIR = DATA_DIR / "omniglot"
RECONSTRUCTED_BACKGROUND = OMNIGLOT_DIR / "reconstructed" / "images_background.zip"
# The smallest background alphabet (14 characters): keeps PNG decoding under a second.
SMALL_ALPHABET = "Blackfoot_(Canadian_Aboriginal_Syllabics)"

needs_data = pytest.mark.skipif(
    not (OMNIGLOT_DIR / "omniglot28").is_dir(),
    reason=f"Omniglot data not found at {OMNIGLOT_DIR} (set {ENV_VAR} to the shared data).",
)


@pytest.fixture(scope="module")
def data() -> omniglot.OmniglotData:
    if not (OMNIGLOT_DIR / "omniglot28").is_dir():
        pytest.skip(f"Omniglot data not found at {OMNIGLOT_DIR} (set {ENV_VAR}).")
    return omniglot.load_omniglot(DATA_DIR, source="arrays")


@pytest.fixture(scope="module")
def splits(data) -> dict[tuple[str, str], omniglot.ClassSplit]:
    result = {
        ("vinyals", s): omniglot.vinyals_split(data, s) for s in omniglot.PROTOCOLS["vinyals"]
    }
    result.update({("maml", s): omniglot.maml_split(data, s) for s in omniglot.PROTOCOLS["maml"]})
    return result


# ------------------------------------------------------------------------ loader


@needs_data
def test_loader_counts_shapes_and_polarity(data):
    assert data.images.shape == (1623, 20, 28, 28)
    assert data.images.dtype == np.uint8
    assert data.num_characters == len(data.names) == 1623
    assert int(data.background.sum()) == 964
    assert int((~data.background).sum()) == 659
    # Background first, then evaluation, each sorted by alphabet then character number.
    assert data.background[:964].all() and not data.background[964:].any()
    for block in (data.names[:964], data.names[964:]):
        keys = [(name.split("/")[0], int(name.split("/")[1][len("character") :])) for name in block]
        assert keys == sorted(keys)
    assert data.names[0] == "Alphabet_of_the_Magi/character01"
    assert data.names[964] == "Angelic/character01"
    # Ink = 255: strokes are thin, so most of each image is 0 and the mean is low.
    unit = data.images / 255.0
    assert 0.03 < unit.mean() < 0.2
    assert np.median(data.images) == 0
    # Every drawing has ink (no blank images; LANCZOS can soften the thinnest strokes).
    assert (data.images.reshape(1623 * 20, -1).max(axis=1) >= 128).all()
    assert not data.images.flags.writeable


@needs_data
def test_png_zip_matches_arrays(tmp_path):
    if not RECONSTRUCTED_BACKGROUND.is_file():
        pytest.skip(f"{RECONSTRUCTED_BACKGROUND} not found.")
    arrays = omniglot.load_omniglot(DATA_DIR, source="arrays", alphabets=[SMALL_ALPHABET])
    png = omniglot.load_omniglot(
        DATA_DIR, source="png", alphabets=[SMALL_ALPHABET], cache_dir=tmp_path
    )
    assert png.names == arrays.names and len(png.names) == 14
    assert png.background.all()
    # Both are LANCZOS downsamples of the same bits.
    difference = np.abs(png.images.astype(int) - arrays.images.astype(int))
    assert difference.max() <= 1

    cached = list(tmp_path.glob("*.npz"))
    assert len(cached) == 1 and not list(tmp_path.glob("*.tmp"))
    again = omniglot.load_omniglot(
        DATA_DIR, source="png", alphabets=[SMALL_ALPHABET], cache_dir=tmp_path
    )
    np.testing.assert_array_equal(again.images, png.images)
    assert again.names == png.names


@needs_data
def test_png_folders_are_found_in_a_user_dir(tmp_path):
    """--data-dir may point at a folder holding the canonical images_* folders."""
    if not RECONSTRUCTED_BACKGROUND.is_file():
        pytest.skip(f"{RECONSTRUCTED_BACKGROUND} not found.")
    prefix = f"images_background/{SMALL_ALPHABET}/"
    with zipfile.ZipFile(RECONSTRUCTED_BACKGROUND) as archive:
        archive.extractall(tmp_path, [m for m in archive.namelist() if m.startswith(prefix)])
    evaluation = tmp_path / "images_evaluation" / "Angelic"
    with zipfile.ZipFile(OMNIGLOT_DIR / "reconstructed" / "images_evaluation.zip") as archive:
        members = [m for m in archive.namelist() if m.startswith("images_evaluation/Angelic/")]
        archive.extractall(tmp_path, members)
    assert evaluation.is_dir()

    alphabets = [SMALL_ALPHABET, "Angelic"]
    loaded = omniglot.load_omniglot(tmp_path, alphabets=alphabets, cache=False)
    reference = omniglot.load_omniglot(DATA_DIR, source="arrays", alphabets=alphabets)
    assert loaded.names == reference.names
    np.testing.assert_array_equal(loaded.background, reference.background)
    assert np.abs(loaded.images.astype(int) - reference.images.astype(int)).max() <= 1

    # Without an alphabet filter a partial source is an error, not a silent subset.
    with pytest.raises(ValueError, match="incomplete"):
        omniglot.load_omniglot(tmp_path, cache=False)


@needs_data
def test_unknown_alphabet_raises():
    with pytest.raises(ValueError, match="Unknown Omniglot alphabets"):
        omniglot.load_omniglot(DATA_DIR, source="arrays", alphabets=["Klingon"])


def test_missing_data_error_lists_places(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(FileNotFoundError) as error:
        omniglot.load_omniglot(tmp_path)
    message = str(error.value)
    root = tmp_path.resolve()
    for expected in (
        root / "omniglot" / "omniglot28" / "background_28x28.npz",
        root / "omniglot" / "omniglot28" / "evaluation_28x28.npz",
        root / "omniglot" / "images_background",
        root / "omniglot" / "images_background.zip",
        root / "omniglot" / "reconstructed" / "images_evaluation.zip",
        root / "omniglot" / "original" / "images_evaluation.zip",
    ):
        assert str(expected) in message
    for expected in (ENV_VAR, "--data-dir", "download_omniglot", "metajax download omniglot"):
        assert expected in message


# ------------------------------------------------------------------------ splits


@needs_data
def test_split_counts_and_checksums(splits):
    expected_counts = {
        ("vinyals", "train"): 4112,
        ("vinyals", "val"): 688,
        ("vinyals", "test"): 1692,
        ("vinyals", "trainval"): 4800,
        ("maml", "train"): 4400,
        ("maml", "val"): 400,
        ("maml", "trainval"): 4800,
        ("maml", "test"): 1692,
    }
    assert set(splits) == set(expected_counts) == set(omniglot.EXPECTED_CHECKSUMS)
    for key, split in splits.items():
        assert split.num_classes == len(split.names) == expected_counts[key]
        assert split.images.shape == (expected_counts[key], 20, 28, 28)
        assert split.images.dtype == np.uint8
        assert len(set(split.names)) == split.num_classes
        assert split.checksum == omniglot.class_list_checksum(split.names)
        assert split.checksum == omniglot.EXPECTED_CHECKSUMS[key]
        manual = hashlib.sha256("\n".join(split.names).encode()).hexdigest()
        assert split.checksum == manual


@needs_data
def test_vinyals_splits_are_disjoint(splits):
    train, val, test, trainval = (
        set(splits[("vinyals", s)].names) for s in ("train", "val", "test", "trainval")
    )
    assert not train & val and not train & test and not val & test
    assert trainval == train | val
    assert len(train | val | test) == 6492  # 1623 characters x 4 rotations


@needs_data
def test_maml_split_is_disjoint_by_character(splits, data):
    def characters(split):
        return {name.rsplit("/", 1)[0] for name in split.names}

    train, test = characters(splits[("maml", "trainval")]), characters(splits[("maml", "test")])
    assert len(train) == 1200 and len(test) == 423
    assert not train & test
    assert train | test == set(data.names)
    inner_train, val = characters(splits[("maml", "train")]), characters(splits[("maml", "val")])
    assert len(inner_train) == 1100 and len(val) == 100
    assert not inner_train & val and inner_train | val == train
    # Pooling: both sets draw from background and evaluation alphabets.
    background = {n for n, b in zip(data.names, data.background, strict=True) if b}
    assert train & background and train - background
    assert test & background and test - background


@needs_data
def test_maml_other_seed_is_a_different_split(data):
    other = omniglot.maml_split(data, "test", seed=2)
    assert other.num_classes == 1692
    assert other.checksum != omniglot.EXPECTED_CHECKSUMS[("maml", "test")]


@needs_data
def test_rotations_are_counter_clockwise_np_rot90(splits, data):
    index = {name: i for i, name in enumerate(data.names)}
    for key in (("vinyals", "test"), ("maml", "train")):
        split = splits[key]
        position = {name: i for i, name in enumerate(split.names)}
        character = split.names[0].rsplit("/", 1)[0]
        original = data.images[index[character]]
        for k, degrees in enumerate(omniglot.ROTATIONS):
            rotated = split.images[position[f"{character}/rot{degrees:03d}"]]
            np.testing.assert_array_equal(rotated, np.rot90(original, k=k, axes=(-2, -1)))
    # Counter-clockwise: the top row of the rotated image is the original right column.
    np.testing.assert_array_equal(np.rot90(original, 1, axes=(-2, -1))[:, 0, :], original[:, :, -1])


@needs_data
def test_split_checksum_mismatch_raises(data, tmp_path, monkeypatch):
    monkeypatch.setitem(omniglot.EXPECTED_CHECKSUMS, ("vinyals", "val"), "0" * 64)
    with pytest.raises(ValueError, match="not the standard classes"):
        omniglot.vinyals_split(data, "val")


def test_missing_split_file_raises(tmp_path):
    fake = omniglot.OmniglotData(
        images=np.zeros((1, 20, 28, 28), np.uint8),
        names=("A/character01",),
        background=np.ones(1, bool),
    )
    with pytest.raises(FileNotFoundError, match=r"train\.txt") as error:
        omniglot.vinyals_split(fake, "train", data_dir=tmp_path)
    assert str(tmp_path.resolve() / "omniglot" / "splits" / "vinyals" / "train.txt") in str(
        error.value
    )
    with pytest.raises(ValueError, match="split must be one of"):
        omniglot.vinyals_split(fake, "validation", data_dir=tmp_path)


@needs_data
def test_load_split():
    split = omniglot.load_split("vinyals", "val", DATA_DIR)
    assert split.num_classes == 688
    assert split.checksum == omniglot.EXPECTED_CHECKSUMS[("vinyals", "val")]
    with pytest.raises(ValueError, match="protocol"):
        omniglot.load_split("prototypical", "train", DATA_DIR)


# ------------------------------------------------------------------------ download


def _fake_source(tmp_path, payload: bytes, name: str = "images_background.zip"):
    source = tmp_path / "remote" / name
    source.parent.mkdir(exist_ok=True)
    source.write_bytes(payload)
    remote = omniglot.RemoteFile(
        url=source.as_uri(), size=len(payload), md5=hashlib.md5(payload).hexdigest()
    )
    return source, remote


def test_download_verifies_and_keeps_good_files(tmp_path):
    payload = bytes(range(256)) * 50
    _, remote = _fake_source(tmp_path, payload)
    dest = tmp_path / "data" / "omniglot"
    files = {"images_background.zip": remote}
    assert omniglot.download_omniglot(dest, files=files, chunk_size=1000) == dest
    assert (dest / "images_background.zip").read_bytes() == payload
    assert sorted(p.name for p in dest.iterdir()) == ["images_background.zip"]

    # A verified existing file is re-checked and kept, not fetched again.
    def refuse(url):
        raise AssertionError(f"unexpected fetch of {url}")

    omniglot.download_omniglot(dest, files=files, opener=refuse)
    assert (dest / "images_background.zip").read_bytes() == payload

    # A corrupt existing file is replaced by a verified download.
    (dest / "images_background.zip").write_bytes(b"x" * len(payload))
    with pytest.warns(UserWarning, match="Re-downloading"):
        omniglot.download_omniglot(dest, files=files)
    assert (dest / "images_background.zip").read_bytes() == payload


@pytest.mark.parametrize("damage", ["corrupt", "truncated", "too_long"])
def test_download_rejects_bad_files(tmp_path, damage):
    payload = bytes(range(256)) * 50
    source, remote = _fake_source(tmp_path, payload)
    if damage == "corrupt":
        source.write_bytes(payload[:-1] + b"\x00")
    elif damage == "truncated":
        source.write_bytes(payload[: len(payload) // 2])
    else:
        source.write_bytes(payload + b"extra")
    dest = tmp_path / "omniglot"
    with pytest.raises(omniglot.DownloadError, match=r"md5|truncated|more than"):
        omniglot.download_omniglot(dest, files={"images_background.zip": remote}, chunk_size=1000)
    assert list(dest.iterdir()) == []  # neither the final file nor a .part is left


def test_download_network_error_is_clear(tmp_path):
    remote = omniglot.RemoteFile((tmp_path / "nowhere.zip").as_uri(), 10, "0" * 32)
    dest = tmp_path / "omniglot"
    with pytest.raises(omniglot.DownloadError, match="Could not download"):
        omniglot.download_omniglot(dest, files={"images_evaluation.zip": remote})
    assert list(dest.iterdir()) == []


def test_default_download_targets_are_canonical():
    background = omniglot.OMNIGLOT_ZIPS["images_background.zip"]
    evaluation = omniglot.OMNIGLOT_ZIPS["images_evaluation.zip"]
    assert background.url.startswith("https://github.com/brendenlake/omniglot/")
    assert (background.size, background.md5) == (9_464_212, "68d2efa1b9178cc56df9314c21c6e718")
    assert (evaluation.size, evaluation.md5) == (6_462_886, "6b91aef0f799c5bb55b94e3f2daec811")


@needs_data
def test_downloaded_zips_are_loadable(tmp_path):
    """A zip that download_omniglot put in <data_dir>/omniglot is found by the loader."""
    if not RECONSTRUCTED_BACKGROUND.is_file():
        pytest.skip(f"{RECONSTRUCTED_BACKGROUND} not found.")
    dest = tmp_path / "omniglot"
    dest.mkdir()
    for subset in omniglot.SUBSETS:
        shutil.copy(OMNIGLOT_DIR / "reconstructed" / f"images_{subset}.zip", dest)
    loaded = omniglot.load_omniglot(tmp_path, alphabets=["Tagalog"], cache=False)
    assert len(loaded.names) == 17 and loaded.names[0] == "Tagalog/character01"
