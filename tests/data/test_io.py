from __future__ import annotations

import h5py
import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from everylabel.data import io
from everylabel.data.io import (
    IMAGE_SUFFIXES,
    ImageMeta,
    case_id_from_filename,
    read_image,
    read_label,
    write_image,
    write_label,
)

RNG = np.random.default_rng(0)


def _nifti(path, data, *, qcode=1, scode=2):
    affine = np.array([[0.0, -0.8, 0.1, 10.0], [0.7, 0.0, 0.0, -20.0], [0.0, 0.05, 2.5, 5.0], [0, 0, 0, 1]])
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=qcode)
    img.set_sform(affine, code=scode)
    nib.save(img, str(path))
    return nib.load(str(path))


@pytest.mark.parametrize("name, expected", [
    ("drive_21_0000.png", "drive_21"),
    ("ct_007_0000.nii.gz", "ct_007"),
    ("ct_007_0001.NII.GZ", "ct_007"),
    ("ct_007.nii.gz", "ct_007"),
    ("21_training.tif", "21_training"),
    ("/a/b/case_3_0002.h5", "case_3"),
    ("x.tiff", "x"), ("x.jpeg", "x"), ("x.hdf5", "x"), ("x.npy", "x"), ("x.gif", "x"), ("x_12.nii", "x_12"),
])
def test_case_id_from_filename(name, expected):
    assert case_id_from_filename(name) == expected


def test_image_suffixes_cover_formats():
    assert {".nii.gz", ".nii", ".png", ".tif", ".tiff", ".gif", ".jpg", ".jpeg", ".h5", ".hdf5", ".npy"} <= set(
        IMAGE_SUFFIXES)


def test_nifti_round_trip_keeps_geometry(tmp_path):
    data = RNG.normal(size=(6, 7, 5)).astype(np.float32)
    src = _nifti(tmp_path / "ct_0000.nii.gz", data)
    image, meta = read_image(tmp_path / "ct_0000.nii.gz")
    assert image.shape == (1, 6, 7, 5) and image.dtype == np.float32
    np.testing.assert_array_equal(image[0], data)
    assert meta.format == "nifti" and meta.shape == (6, 7, 5)
    assert meta.spacing == tuple(float(z) for z in src.header.get_zooms())
    np.testing.assert_array_equal(meta.affine, src.affine)

    labels = (data > 0).astype(np.int64) + (data > 1)
    write_label(tmp_path / "pred.nii.gz", labels, meta)
    out = nib.load(str(tmp_path / "pred.nii.gz"))
    assert out.shape == (6, 7, 5) and out.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(out.affine, src.affine)
    np.testing.assert_array_equal(out.header.get_qform(), src.header.get_qform())
    np.testing.assert_array_equal(out.header.get_sform(), src.header.get_sform())
    assert (int(out.header["qform_code"]), int(out.header["sform_code"])) == (1, 2)
    assert out.header.get_zooms() == src.header.get_zooms()
    back, back_meta = read_label(tmp_path / "pred.nii.gz")
    np.testing.assert_array_equal(back, labels)
    assert back.dtype == np.int64 and back_meta.spacing == meta.spacing


def test_nifti_4d_channels_and_probability_output(tmp_path):
    data = RNG.random((5, 4, 3, 2)).astype(np.float32)
    _nifti(tmp_path / "mr.nii.gz", data)
    image, meta = read_image(tmp_path / "mr.nii.gz")
    assert image.shape == (2, 5, 4, 3) and meta.shape == (5, 4, 3) and len(meta.spacing) == 3
    np.testing.assert_array_equal(image, np.moveaxis(data, -1, 0))

    probs = RNG.random((3, 5, 4, 3)).astype(np.float32)
    write_image(tmp_path / "probs.nii.gz", probs, meta)
    out = nib.load(str(tmp_path / "probs.nii.gz"))
    assert out.shape == (5, 4, 3, 3) and out.get_data_dtype() == np.float32
    np.testing.assert_array_equal(out.affine, meta.affine)
    back, _ = read_image(tmp_path / "probs.nii.gz")
    np.testing.assert_array_equal(back, probs)


def test_label_written_for_png_input_as_nifti_uses_spacing(tmp_path):
    meta = ImageMeta(format="png", spacing=(0.5, 2.0), shape=(4, 3))
    write_label(tmp_path / "lab.nii.gz", np.ones((4, 3), dtype=np.int64), meta)
    out = nib.load(str(tmp_path / "lab.nii.gz"))
    assert out.shape == (4, 3) and out.header.get_zooms()[:2] == (0.5, 2.0)


@pytest.mark.parametrize("suffix", [".png", ".gif", ".tif"])
def test_gray_label_round_trip_2d(tmp_path, suffix):
    labels = RNG.integers(0, 5, size=(9, 11))
    meta = ImageMeta(format="png", spacing=(1.0, 1.0), shape=(9, 11))
    write_label(tmp_path / f"lab{suffix}", labels, meta)
    back, back_meta = read_label(tmp_path / f"lab{suffix}")
    np.testing.assert_array_equal(back, labels)
    assert back_meta.shape == (9, 11) and back_meta.spacing == (1.0, 1.0)
    image, _ = read_image(tmp_path / f"lab{suffix}")
    assert image.shape == (1, 9, 11)
    np.testing.assert_array_equal(image[0], labels)


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_rgb_image_gives_three_channels(tmp_path, mode, suffix):
    rgb = RNG.integers(0, 256, size=(6, 8, len(mode)), dtype=np.uint8)
    Image.fromarray(rgb, mode=mode).save(tmp_path / f"x{suffix}")
    image, meta = read_image(tmp_path / f"x{suffix}")
    assert image.shape == (3, 6, 8) and meta.shape == (6, 8)
    np.testing.assert_array_equal(image, np.moveaxis(rgb[..., :3], -1, 0).astype(np.float32))


def test_jpg_reads_approximately(tmp_path):
    gray = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1))
    Image.fromarray(gray).save(tmp_path / "x.jpg", quality=100)
    image, meta = read_image(tmp_path / "x.jpg")
    assert image.shape == (1, 16, 16) and meta.format == "jpg"
    assert np.abs(image[0] - gray).max() < 8


def test_lzw_tif_falls_back_to_pillow(tmp_path):
    rgb = RNG.integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "lzw.tif", compression="tiff_lzw")
    image, _ = read_image(tmp_path / "lzw.tif")
    np.testing.assert_array_equal(image, np.moveaxis(rgb, -1, 0))


def test_tif_stack_is_a_volume_and_cyx_is_channels(tmp_path):
    vol = RNG.integers(0, 1000, size=(4, 6, 5), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "vol.tif", vol, photometric="minisblack")
    image, meta = read_image(tmp_path / "vol.tif")
    assert image.shape == (1, 4, 6, 5) and meta.shape == (4, 6, 5)
    labels, _ = read_label(tmp_path / "vol.tif")
    np.testing.assert_array_equal(labels, vol)

    probs = RNG.random((3, 6, 5)).astype(np.float32)
    write_image(tmp_path / "probs.tif", probs, ImageMeta(format="png", spacing=(1.0, 1.0), shape=(6, 5)))
    back, back_meta = read_image(tmp_path / "probs.tif")
    assert back_meta.shape == (6, 5)
    np.testing.assert_array_equal(back, probs)


def test_palette_gif_label_keeps_indices(tmp_path):
    index = RNG.integers(0, 2, size=(5, 6), dtype=np.uint8)
    im = Image.frombytes("P", (6, 5), index.tobytes())
    im.putpalette([4, 2, 4, 252, 254, 252] + [0] * 762)  # like DRIVE's 2nd_manual GIFs
    im.save(tmp_path / "manual2.gif")
    labels, meta = read_label(tmp_path / "manual2.gif")
    np.testing.assert_array_equal(labels, index)
    assert meta.extra["mode"] == "P"
    image, _ = read_image(tmp_path / "manual2.gif")  # converted through the palette
    assert image.shape == (3, 5, 6)
    np.testing.assert_array_equal(image[1], np.where(index == 1, 254, 2))


def test_hdf5_keys(tmp_path):
    img = RNG.random((4, 5, 6)).astype(np.float32)
    lab = RNG.integers(0, 3, size=(4, 5, 6)).astype(np.uint8)
    with h5py.File(tmp_path / "case.h5", "w") as f:
        f.create_dataset("image", data=img)
        f.create_dataset("label", data=lab)
        f.create_dataset("other", data=img * 2)
    image, meta = read_image(tmp_path / "case.h5")
    np.testing.assert_array_equal(image[0], img)
    assert meta.format == "hdf5" and meta.extra["key"] == "image" and meta.spacing == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(read_label(tmp_path / "case.h5")[0], lab)
    np.testing.assert_array_equal(read_image(tmp_path / "case.h5", key="other")[0][0], img * 2)
    np.testing.assert_array_equal(read_image(f"{tmp_path / 'case.h5'}::other", key="image")[0][0], img * 2)
    with pytest.raises(ValueError, match=r"no dataset 'missing'.*datasets found: \['image', 'label', 'other'\]"):
        read_image(tmp_path / "case.h5", key="missing")

    write_label(f"{tmp_path / 'out.h5'}::seg", lab.astype(np.int64), meta)
    np.testing.assert_array_equal(read_label(tmp_path / "out.h5", key="seg")[0], lab)
    probs = RNG.random((2, 4, 5, 6)).astype(np.float32)
    write_image(tmp_path / "probs.h5", probs, meta)
    back, back_meta = read_image(tmp_path / "probs.h5")
    np.testing.assert_array_equal(back, probs)
    assert back_meta.spacing == (1.0, 1.0, 1.0)


def test_npy_round_trip(tmp_path):
    arr = RNG.integers(0, 4, size=(3, 4, 5))
    meta = ImageMeta(format="npy", spacing=(1.0, 1.0, 1.0), shape=(3, 4, 5))
    write_label(tmp_path / "x.npy", arr, meta)
    np.testing.assert_array_equal(read_label(tmp_path / "x.npy")[0], arr)
    assert read_image(tmp_path / "x.npy")[0].shape == (1, 3, 4, 5)
    with pytest.raises(ValueError, match="holds one channel"):
        write_image(tmp_path / "y.npy", np.zeros((2, 3, 4, 5)), meta)


def test_several_paths_are_channels(tmp_path):
    a, b = (RNG.integers(0, 255, size=(5, 6), dtype=np.uint8) for _ in range(2))
    Image.fromarray(a).save(tmp_path / "c_0000.png")
    Image.fromarray(b).save(tmp_path / "c_0001.png")
    image, meta = read_image([tmp_path / "c_0000.png", tmp_path / "c_0001.png"])
    assert image.shape == (2, 5, 6)
    np.testing.assert_array_equal(image[1], b)
    assert len(meta.extra["paths"]) == 2
    Image.fromarray(np.zeros((5, 7), np.uint8)).save(tmp_path / "d_0001.png")
    with pytest.raises(ValueError, match=r"c_0000\.png is \(5, 6\).*d_0001\.png is \(5, 7\)"):
        read_image([tmp_path / "c_0000.png", tmp_path / "d_0001.png"])


def test_nan_inf_and_missing_files_name_the_file(tmp_path):
    data = np.zeros((3, 3, 3), np.float32)
    data[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "bad.nii.gz"))
    with pytest.raises(ValueError, match=r"bad\.nii\.gz: image holds 1 NaN/Inf"):
        read_image(tmp_path / "bad.nii.gz")
    with pytest.raises(ValueError, match=r"nope\.png: file not found"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ValueError, match="unknown image file type"):
        read_image(tmp_path / "x.bmp")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"broken\.png: cannot read png"):
        read_image(tmp_path / "broken.png")


def test_read_label_threshold_mapping_and_rgb(tmp_path):
    raw = np.array([[0, 130, 255], [233, 0, 255]], dtype=np.uint8)
    Image.fromarray(raw).save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_label(tmp_path / "m.png", threshold=127)[0], [[0, 1, 1], [1, 0, 1]])
    np.testing.assert_array_equal(read_label(tmp_path / "m.png", mapping={255: 1, 0: 7})[0],
                                  [[7, 130, 1], [233, 7, 1]])
    Image.fromarray(np.stack([raw] * 3, -1)).save(tmp_path / "rgb_same.png")
    np.testing.assert_array_equal(read_label(tmp_path / "rgb_same.png")[0], raw)
    rgb = np.stack([raw, raw, raw[::-1]], -1)
    Image.fromarray(rgb).save(tmp_path / "rgb_diff.png")
    with pytest.raises(ValueError, match=r"rgb_diff\.png: a label map must have one channel"):
        read_label(tmp_path / "rgb_diff.png")
    nib.save(nib.Nifti1Image(np.full((2, 2, 2), 0.5, np.float32), np.eye(4)), str(tmp_path / "soft.nii.gz"))
    with pytest.raises(ValueError, match=r"soft\.nii\.gz: label map holds non-integer values"):
        read_label(tmp_path / "soft.nii.gz")


def test_write_errors(tmp_path):
    meta = ImageMeta(format="png", spacing=(1.0, 1.0), shape=(4, 4))
    with pytest.raises(ValueError, match=r"label shape \(4, 5\) does not match the image shape \(4, 4\)"):
        write_label(tmp_path / "a.png", np.zeros((4, 5), np.int64), meta)
    with pytest.raises(ValueError, match=r"label values 0\.\.300 do not fit this format \(uint8\)"):
        write_label(tmp_path / "a.png", np.arange(16).reshape(4, 4) * 20, meta)
    with pytest.raises(ValueError, match="JPEG is lossy"):
        write_label(tmp_path / "a.jpg", np.zeros((4, 4), np.int64), meta)
    with pytest.raises(ValueError, match="use .tif for probabilities"):
        write_image(tmp_path / "a.png", np.full((2, 4, 4), 0.5), meta)
    assert list(tmp_path.iterdir()) == []


def test_writes_are_atomic(tmp_path, monkeypatch):
    meta = ImageMeta(format="png", spacing=(1.0, 1.0), shape=(4, 4))
    for suffix in (".png", ".tif", ".nii.gz", ".h5", ".gif", ".npy"):
        write_label(tmp_path / f"ok{suffix}", np.ones((4, 4), np.int64), meta)
        write_image(tmp_path / f"img{suffix}", np.ones((1, 4, 4)), meta)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []

    def broken(tmp, array, fmt):
        tmp.write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(io, "_write_pil", broken)
    with pytest.raises(OSError, match="disk full"):
        write_label(tmp_path / "ok.png", np.zeros((4, 4), np.int64), meta)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    np.testing.assert_array_equal(read_label(tmp_path / "ok.png")[0], np.ones((4, 4)))  # old file intact


def test_2d_probabilities_as_nifti_keep_channels_off_the_spatial_axes(tmp_path):
    meta = ImageMeta(format="png", spacing=(1.0, 1.0), shape=(4, 5))
    probs = RNG.random((3, 4, 5)).astype(np.float32)
    write_image(tmp_path / "p.nii.gz", probs, meta)
    assert nib.load(str(tmp_path / "p.nii.gz")).shape == (4, 5, 1, 3)
    back, back_meta = read_image(tmp_path / "p.nii.gz")
    np.testing.assert_array_equal(back[..., 0], probs)
    assert back_meta.shape == (4, 5, 1)
