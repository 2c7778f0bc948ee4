"""Helpers of the io tests (imported by name: tests/io is on sys.path under pytest)."""

import numpy as np
import SimpleITK as sitk


def rewrite(path, change):
    """Read an image, let ``change(image) -> image`` alter it, write it back."""
    image = sitk.ReadImage(str(path))
    sitk.WriteImage(change(image), str(path), useCompression=True)


def replace_array(path, fn):
    image = sitk.ReadImage(str(path))
    array = fn(sitk.GetArrayFromImage(image))
    out = sitk.GetImageFromArray(np.asarray(array), isVector=False)
    out.CopyInformation(image)
    sitk.WriteImage(out, str(path), useCompression=True)
