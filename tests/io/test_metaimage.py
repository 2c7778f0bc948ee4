"""MetaImage without SimpleITK (``toolkit/io/metaimage.py``) gives exactly SimpleITK's arrays
and geometry, and refuses malformed files in one line; ``io/images`` picks it when SimpleITK
is not importable (the lean image)."""

from __future__ import annotations

import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from toolkit.errors import ToolkitError
from toolkit.io import images, metaimage
from toolkit.io.metaimage import MetaImage, read_header, read_metaimage
from toolkit.io.metaimage_writer import write_metaimage

DTYPES = ["u1", "i1", "i2", "u2", "i4", "u4", "i8", "u8", "f4", "f8"]
# numpy shape, pixel components: 2D, 3D, 3D of 4 channels, 2D RGB, 4D
SHAPES = [((7, 9), 1), ((5, 7, 9), 1), ((5, 7, 9, 4), 4), ((7, 9, 3), 3), ((3, 4, 5, 6), 1)]


def sitk_image(shape, components, dtype, seed=0) -> sitk.Image:
    rng = np.random.default_rng(seed)
    array = (rng.random(shape) * 120 - (0 if np.dtype(dtype).kind == "u" else 60)).astype(dtype)
    image = sitk.GetImageFromArray(array, isVector=components > 1)
    dim = image.GetDimension()
    image.SetSpacing(tuple(float(v) for v in rng.random(dim) + 0.25))
    image.SetOrigin(tuple(float(v) for v in rng.normal(size=dim) * 40))
    rotation, _ = np.linalg.qr(rng.normal(size=(dim, dim)))  # not symmetric: order matters
    image.SetDirection(tuple(float(v) for v in rotation.ravel()))
    return image


def assert_same(ours: MetaImage, path: Path) -> None:
    theirs = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(theirs)
    assert ours.array.dtype == array.dtype and ours.array.shape == array.shape
    assert np.array_equal(ours.array, array)
    assert ours.spacing == theirs.GetSpacing()
    assert ours.origin == theirs.GetOrigin()
    assert ours.direction == theirs.GetDirection()
    assert ours.size == theirs.GetSize()
    assert ours.channels == theirs.GetNumberOfComponentsPerPixel()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("suffix", [".mha", ".mhd"])
def test_reads_and_writes_what_simpleitk_does(dtype, compress, suffix, tmp_path):
    for k, (shape, components) in enumerate(SHAPES):
        image = sitk_image(shape, components, dtype, seed=k)
        theirs = tmp_path / f"sitk{k}{suffix}"
        sitk.WriteImage(image, str(theirs), useCompression=compress)
        ours = read_metaimage(theirs)
        assert_same(ours, theirs)
        # written here, read back by SimpleITK: the same pixels, type and geometry
        written = tmp_path / f"ours{k}{suffix}"
        write_metaimage(written, ours, compress=compress)
        again = sitk.ReadImage(str(written))
        assert again.GetPixelID() == image.GetPixelID()
        assert_same(ours, written)
        if suffix == ".mhd":
            assert (tmp_path / f"ours{k}.{'zraw' if compress else 'raw'}").is_file()


def test_big_endian_data_and_header_synonyms(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=">i2").reshape(2, 3, 4) - 7
    header = (
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nElementByteOrderMSB = True\n"
        "Position = 1.5 -2 3\nOrientation = 0 1 0 -1 0 0 0 0 1\nElementSize = 0.5 0.75 2\n"
        "DimSize = 4 3 2\nElementType = MET_SHORT\nElementDataFile = LOCAL\n"
    )
    path = tmp_path / "msb.mha"
    path.write_bytes(header.encode() + array.tobytes())
    ours = read_metaimage(path)
    assert ours.array.dtype.isnative
    assert_same(ours, path)


def test_a_separate_data_file_with_a_header_size(tmp_path):
    array = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    (tmp_path / "d.raw").write_bytes(b"JUNKJUNK" + array.tobytes())
    path = tmp_path / "d.mhd"
    path.write_text(
        "NDims = 3\nDimSize = 5 4 3\nElementType = MET_FLOAT\nHeaderSize = 8\n"
        "ElementDataFile = d.raw\n"
    )
    assert_same(read_metaimage(path), path)
    path.write_text(path.read_text().replace("HeaderSize = 8", "HeaderSize = -1"))
    assert_same(read_metaimage(path), path)


def test_images_without_simpleitk_give_the_same_arrays_and_geometry(tmp_path, monkeypatch):
    """``io/images`` with SimpleITK gone reads and writes through ``io/metaimage``: the same
    arrays and geometry as with it; other files get one line naming ``--runtime torch``."""
    channels = []
    for c in range(2):
        image = sitk_image((6, 7, 8), 1, "i2", seed=c)
        image.SetSpacing((0.7, 0.8, 2.5))
        image.SetOrigin((1.0, 2.0, 3.0))
        image.SetDirection(sitk_image((6, 7, 8), 1, "i2", seed=9).GetDirection())
        channels.append(tmp_path / f"case_{c:04d}.mha")
        sitk.WriteImage(image, str(channels[-1]), useCompression=True)
    four_channel = tmp_path / "rgba.mha"
    sitk.WriteImage(sitk_image((6, 7, 8, 4), 4, "u1"), str(four_channel), useCompression=True)
    nifti = tmp_path / "case.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(channels[0])), str(nifti))

    with_sitk = images.read_channels(channels), images.load_image(four_channel)
    geometry_with = images.read_geometry(channels[0])
    monkeypatch.setattr(images, "sitk", None)
    assert not images.uses_simpleitk()
    stacked, geometry = images.read_channels(channels)
    assert np.array_equal(stacked, with_sitk[0][0]) and geometry == with_sitk[0][1]
    loaded = images.load_image(four_channel)
    assert np.array_equal(loaded.array, with_sitk[1].array) and loaded.components == 4
    assert loaded.geometry == with_sitk[1].geometry
    assert images.read_geometry(channels[0]) == geometry_with

    labels = (stacked[0] > 0).astype(np.uint8)
    images.write_image(tmp_path / "out.mha", labels, geometry)
    monkeypatch.setattr(images, "sitk", sitk)
    back, back_geometry = images.read_image(tmp_path / "out.mha")
    assert np.array_equal(back, labels) and back_geometry == geometry
    assert sitk.ReadImage(str(tmp_path / "out.mha")).GetPixelID() == sitk.sitkUInt8

    monkeypatch.setattr(images, "sitk", None)
    for path in (nifti, tmp_path / "case.tif"):
        path.touch()
        with pytest.raises(ToolkitError, match="--runtime torch") as caught:
            images.read_image(path)
        assert str(path) in caught.value.one_line() and "\n" not in caught.value.one_line()
    with pytest.raises(ToolkitError, match="--runtime torch"):
        images.write_image(tmp_path / "out.nii.gz", labels, geometry)


# --- hostile files ---------------------------------------------------------------------

GOOD = (
    "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
    "CompressedData = False\nTransformMatrix = 1 0 0 0 1 0 0 0 1\nOffset = 0 0 0\n"
    "ElementSpacing = 1 1 1\nDimSize = 4 3 2\nElementType = MET_UCHAR\nElementDataFile = LOCAL\n"
)
DATA = bytes(range(24))


@pytest.mark.parametrize(
    "change, data, message",
    [
        (("DimSize = 4 3 2", "DimSize = 4 3 3"), DATA, "need 36"),
        (("DimSize = 4 3 2", "DimSize = 4 3"), DATA, "DimSize needs 3"),
        (("DimSize = 4 3 2", "DimSize = 4 -3 2"), DATA, "DimSize needs 3 positive"),
        (("DimSize = 4 3 2", "DimSize = 4 x 2"), DATA, "whole numbers"),
        (("NDims = 3", "NDims = 9"), DATA, "NDims"),
        (("MET_UCHAR", "MET_COMPLEX"), DATA, "ElementType"),
        (("ElementSpacing = 1 1 1", "ElementSpacing = 1 0 1"), DATA, "positive"),
        (("ElementSpacing = 1 1 1", "ElementSpacing = 1 nan 1"), DATA, "not finite"),
        (("Offset = 0 0 0", "Offset = 0 0"), DATA, "Offset needs 3"),
        (("1 0 0 0 1 0 0 0 1", "1 0 0 0 0 0 0 0 1"), DATA, "direction"),
        (("ElementDataFile = LOCAL", "ElementDataFile = ../secret.raw"), DATA, "separator"),
        (("ElementDataFile = LOCAL", "ElementDataFile = /etc/passwd"), DATA, "separator"),
        (("ElementDataFile = LOCAL", "ElementDataFile = .hidden.raw"), DATA, "hidden"),
        (("ElementDataFile = LOCAL", "ElementDataFile = LIST"), DATA, "not supported"),
        (("ElementDataFile = LOCAL", "ElementDataFile = s%03d.raw 1 2 1"), DATA, "not supported"),
        (("ElementDataFile = LOCAL", "ElementDataFile = missing.raw"), DATA, "missing"),
        (("BinaryData = True", "BinaryData = False"), DATA, "ASCII"),
        (("BinaryData = True", "BinaryData = maybe"), DATA, "True or False"),
        (("ObjectType = Image", "ObjectType = Mesh"), DATA, "not an Image"),
        (("NDims = 3\n", ""), DATA, "lacks NDims"),
        (("ElementDataFile = LOCAL\n", ""), DATA, "malformed|no ElementDataFile"),
        (("NDims = 3", "NDims 3"), DATA, "malformed"),
        (("CompressedData = False", "CompressedData = True"), DATA, "damaged"),
        (("CompressedData = False", "CompressedData = True"), zlib.compress(DATA[:20]), "20 bytes"),
        (("CompressedData = False", "CompressedData = True"), zlib.compress(DATA * 2), "more than"),
        (
            ("CompressedData = False", "CompressedData = True\nCompressedDataSize = 999"),
            zlib.compress(DATA),
            "more than the",
        ),
    ],
)
def test_malformed_files_are_one_line_naming_the_file(tmp_path, change, data, message):
    path = tmp_path / "bad.mha"
    path.write_bytes(GOOD.replace(*change).encode() + data)
    with pytest.raises(ToolkitError, match=message) as caught:
        read_metaimage(path)
    line = caught.value.one_line()
    assert line.startswith(str(path)) and "\n" not in line


def test_a_data_file_linked_out_of_the_folder_is_refused(tmp_path):
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.raw").write_bytes(DATA)
    folder = tmp_path / "input"
    folder.mkdir()
    (folder / "d.raw").symlink_to(tmp_path / "outside" / "secret.raw")
    path = folder / "linked.mhd"
    path.write_text(GOOD.replace("ElementDataFile = LOCAL", "ElementDataFile = d.raw"))
    with pytest.raises(ToolkitError, match="leads outside") as caught:
        read_metaimage(path)
    assert caught.value.one_line().startswith(str(path))


def test_a_header_claiming_terabytes_allocates_nothing_of_the_sort(tmp_path):
    path = tmp_path / "huge.mha"
    claim = GOOD.replace("DimSize = 4 3 2", "DimSize = 100000 100000 100000")
    for header, data in [
        (claim, DATA),
        (claim.replace("CompressedData = False", "CompressedData = True"), zlib.compress(DATA)),
        # plausible for zlib (under 1032:1) but not what the stream really holds
        (
            GOOD.replace("DimSize = 4 3 2", "DimSize = 1000 1000 20").replace(
                "CompressedData = False", "CompressedData = True"
            ),
            zlib.compress(bytes(1 << 16)) + bytes(20000),
        ),
    ]:
        path.write_bytes(header.encode() + data)
        tracemalloc.start()
        with pytest.raises(ToolkitError):
            read_metaimage(path)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 8 << 20, peak


def test_a_header_without_an_end_is_read_only_up_to_its_bound(tmp_path):
    path = tmp_path / "endless.mha"
    path.write_bytes(b"NDims = 3\n" + b"X" * (metaimage.MAX_HEADER_BYTES * 2))
    with pytest.raises(ToolkitError, match="no ElementDataFile"):
        read_header(path)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(ToolkitError, match="not a MetaImage|not text"):
        read_header(path)


def test_written_numbers_read_back_as_the_same_doubles(tmp_path):
    values = (123456789.0, -0.1 + 1e-12, 1e-300)
    image = MetaImage(
        array=np.zeros((2, 3, 4), np.uint8),
        spacing=(0.1, 7.0, 1e-3),
        origin=values,
        direction=tuple(np.eye(3).ravel()),
    )
    path = tmp_path / "exact.mha"
    write_metaimage(path, image)
    theirs = sitk.ReadImage(str(path))
    assert theirs.GetOrigin() == values and theirs.GetSpacing() == (0.1, 7.0, 1e-3)
