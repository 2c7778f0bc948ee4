"""Generated MetaImage headers and data fed to the numpy reader (the lean image's only image
reader): each answers with an image or one ``ToolkitError`` line, reads nothing outside its
folder, and never allocates more than the file can hold."""

from __future__ import annotations

import tracemalloc
import zlib

import numpy as np
import SimpleITK as sitk
from fuzz_helpers import FUZZ, path_text, run_confined, sandbox
from hypothesis import given
from hypothesis import strategies as st

from toolkit.errors import ToolkitError
from toolkit.io.metaimage import ELEMENT_TYPES, MetaImage, read_metaimage

numbers = st.one_of(
    st.integers(-3, 5).map(str),
    st.sampled_from(["0", "-1", "1e300", "nan", "inf", "x", "", "1.5", "99999999999", "2**64"]),
)
number_lists = st.lists(numbers, max_size=5).map(" ".join)
flags = st.sampled_from(["True", "False", "true", "0", "1", "maybe", ""])
FIELDS = {
    "ObjectType": st.sampled_from(["Image", "image", "Mesh", ""]),
    "NDims": numbers,
    "BinaryData": flags,
    "BinaryDataByteOrderMSB": flags,
    "CompressedData": flags,
    "CompressedDataSize": numbers,
    "TransformMatrix": number_lists,
    "Offset": number_lists,
    "ElementSpacing": number_lists,
    "DimSize": number_lists,
    "ElementNumberOfChannels": numbers,
    "HeaderSize": numbers,
    "ElementType": st.sampled_from([*ELEMENT_TYPES, "MET_COMPLEX", "", "MET_UCHAR_ARRAY"]),
}


@st.composite
def metaimage_files(draw) -> tuple[bytes, bytes | None]:
    """A header (a valid one with some fields replaced, dropped or repeated) and its data."""
    dims = draw(st.integers(1, 4))
    size = draw(st.lists(st.integers(1, 4), min_size=dims, max_size=dims))
    channels = draw(st.sampled_from([1, 1, 3, 4]))
    element = draw(st.sampled_from(list(ELEMENT_TYPES)))
    compressed = draw(st.booleans())
    fields = {
        "ObjectType": "Image",
        "NDims": str(dims),
        "BinaryData": "True",
        "CompressedData": str(compressed),
        "TransformMatrix": " ".join(map(str, np.eye(dims, dtype=int).ravel())),
        "Offset": " ".join(["0"] * dims),
        "ElementSpacing": " ".join(["1"] * dims),
        "DimSize": " ".join(map(str, size)),
        "ElementNumberOfChannels": str(channels),
        "ElementType": element,
    }
    for key in draw(st.lists(st.sampled_from(list(FIELDS)), max_size=3)):
        fields[key] = draw(FIELDS[key])
    for key in draw(st.lists(st.sampled_from(list(fields)), max_size=2)):
        fields.pop(key, None)
    separate = draw(st.booleans())
    fields["ElementDataFile"] = (
        draw(st.one_of(st.just("d.raw"), path_text)) if separate else "LOCAL"
    )
    header = "".join(f"{k} = {v}\n" for k, v in fields.items())
    need = int(np.prod(size)) * channels * ELEMENT_TYPES[element].itemsize
    length = draw(st.sampled_from([need, need, need - 1, need + 1, 0, need * 3]))
    data = bytes(draw(st.binary(min_size=0, max_size=8))) + bytes(max(length, 0))
    data = data[: max(length, 0)]
    if compressed and draw(st.booleans()):
        data = zlib.compress(data)
    if separate:
        return header.encode(), data
    return header.encode() + data, None


@given(file=metaimage_files())
@FUZZ
def test_metaimage_headers(tmp_path, tried, file):
    tried()
    content, data = file
    with sandbox(tmp_path) as root:
        folder = root / "input"
        folder.mkdir()
        path = folder / "case.mha"
        path.write_bytes(content)
        if data is not None:
            (folder / "d.raw").write_bytes(data)
        tracemalloc.start()
        try:
            result = run_confined(root, [], lambda: read_metaimage(path))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        on_disk = sum(p.stat().st_size for p in folder.iterdir())
        # memory follows what the files hold (one copy, a byte swap), never the header's claims
        assert peak <= 3 * 1032 * on_disk + (1 << 20), (peak, on_disk)
        if isinstance(result, ToolkitError):
            assert str(path) in result.one_line()
            return
        assert isinstance(result, MetaImage)
        if b"CompressedData = False" not in content:
            # SimpleITK answers a compressed stream it fails to inflate (even a valid one of a
            # few bytes) with a warning and uninitialised pixels: nothing to compare with
            return
        try:
            theirs = sitk.ReadImage(str(path))
        except RuntimeError:
            return  # read here, refused by SimpleITK: not worse than the host
        if (
            result.size == theirs.GetSize()
            and result.channels == theirs.GetNumberOfComponentsPerPixel()
        ):
            assert np.array_equal(result.array, sitk.GetArrayFromImage(theirs))
