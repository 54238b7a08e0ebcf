"""Read and write images and label maps: NIfTI, PNG/GIF/JPG, TIFF, HDF5 and NumPy files.

Images come back as float32 arrays ``(C, *S)`` (channels first) and label maps as int64 arrays ``S``, each with an
:class:`ImageMeta` that holds the voxel spacing (in array axis order) and the geometry needed to write a result
that overlays on the input in ITK-SNAP or 3D Slicer.

Format rules:
    - NIfTI (``.nii``, ``.nii.gz``) via nibabel, axes as stored (nibabel's order); a 4D file holds channels on its
      last axis. Spacing comes from the header zooms; the affine and header are kept in the meta.
    - PNG / GIF / JPG via Pillow: gray -> 1 channel, RGB/RGBA -> 3 channels (alpha dropped). Palette ('P') images
      are converted through their palette by :func:`read_image`; :func:`read_label` keeps the palette *indices*,
      which are the labels (PASCAL VOC convention; DRIVE's ``2nd_manual`` GIFs hold indices {0, 1}).
    - TIFF via tifffile (Pillow as fallback for compressions tifffile cannot decode without ``imagecodecs``):
      ``YX`` gray, ``YXS`` RGB(A), ``CYX`` / ``CZYX`` channels first, any other 3-axis stack is a volume.
    - HDF5 via h5py: one dataset per file name, chosen with ``key`` or a ``"file.h5::dataset"`` path (the path
      wins). A dataset is spatial unless its ``channel_axis`` attribute is 0. Spacing from a ``spacing`` attribute.
    - ``.npy``: one spatial array (a single channel).

Probabilities (:func:`write_image`) are written as float32 NIfTI with channels on the 4th axis for ``.nii.gz`` and
as float32 multi-page TIFF ``(C, *S)`` tagged with axes ``CYX`` / ``CZYX`` for ``.tif``; both read back with
:func:`read_image` as the same ``(C, *S)`` array. 2D probabilities belong in ``.tif``: a 2D NIfTI with several
channels is stored as ``(H, W, 1, C)`` (viewable, but read back as ``(C, H, W, 1)``, a one-slice volume).

Every write is atomic: the file is written under a temporary name in the target folder and moved into place with
:func:`os.replace`, so a crash never leaves a half-written result under the final name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from everylabel._atomic import atomic_write

IMAGE_SUFFIXES: tuple[str, ...] = (
    ".nii.gz", ".nii", ".png", ".tif", ".tiff", ".gif", ".jpg", ".jpeg", ".h5", ".hdf5", ".npy",
)
"""File suffixes the readers understand (longest first where one ends another)."""

_FORMATS = {
    ".nii.gz": "nifti", ".nii": "nifti", ".png": "png", ".tif": "tif", ".tiff": "tif", ".gif": "gif",
    ".jpg": "jpg", ".jpeg": "jpg", ".h5": "hdf5", ".hdf5": "hdf5", ".npy": "npy",
}
_CHANNEL_SUFFIX = re.compile(r"_\d{4}$")


@dataclass
class ImageMeta:
    """Geometry and provenance of an image read from disk.

    Attributes:
        format: "nifti", "png", "tif", "gif", "jpg", "hdf5" or "npy".
        spacing: voxel size per spatial axis, in array axis order (1.0 per axis when the file stores none).
        affine: 4x4 voxel-to-world matrix for NIfTI, else None.
        shape: spatial shape ``S`` (no channel axis).
        path: the file read (the first one for multi-file images).
        extra: format details: ``header`` (nibabel header), ``key`` (HDF5 dataset), ``mode`` (Pillow mode),
            ``axes`` (TIFF axes), ``paths`` (all channel files).
    """

    format: str
    spacing: tuple[float, ...]
    affine: np.ndarray | None = None
    shape: tuple[int, ...] = ()
    path: str = ""
    extra: dict = field(default_factory=dict)


def split_key(path: str | Path, key: str | None = None) -> tuple[Path, str | None]:
    """Split ``"file.h5::dataset"`` into ``(Path("file.h5"), "dataset")``; without ``::`` return ``key``."""
    text = str(path)
    if "::" in text:
        text, key = text.rsplit("::", 1)
    return Path(text), key


def image_suffix(path: str | Path) -> str:
    """The known suffix of ``path`` (lower case, ``.nii.gz`` as one suffix), or ValueError if unknown."""
    name = split_key(path)[0].name.lower()
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise ValueError(f"{path}: unknown image file type; expected one of {', '.join(IMAGE_SUFFIXES)}")


def case_id_from_filename(name: str | Path) -> str:
    """Case identifier of an image file: the base name without its suffix and nnU-Net channel suffix.

    ``drive_21_0000.png`` -> ``drive_21``; ``ct_007_0000.nii.gz`` -> ``ct_007``; ``21_training.tif`` ->
    ``21_training``. As in nnU-Net, any trailing ``_`` + four digits is read as a channel suffix.
    """
    base = Path(str(name)).name
    lower = base.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return _CHANNEL_SUFFIX.sub("", base)


# ----------------------------------------------------------------------------------------------------- reading


def _read_pil(path: Path, *, label: bool) -> tuple[np.ndarray, dict, bool]:
    """Array ``S`` (gray) or ``(*S, 3)`` (colour, alpha dropped) from a Pillow file; TIFF pages become a stack."""
    from PIL import Image, ImageSequence

    with Image.open(path) as im:
        mode = im.mode
        multi = path.suffix.lower() in (".tif", ".tiff") and getattr(im, "n_frames", 1) > 1
        frames = ImageSequence.Iterator(im) if multi else [im]
        arrays = [_pil_frame(f, label=label) for f in frames]
    colour = arrays[0].ndim == 3
    if any(a.shape != arrays[0].shape for a in arrays):
        raise ValueError(f"{path}: pages differ in shape {sorted({a.shape for a in arrays})}")
    return (arrays[0] if len(arrays) == 1 else np.stack(arrays)), {"mode": mode}, colour


def _pil_frame(im, *, label: bool) -> np.ndarray:
    mode = im.mode
    if mode in ("P", "PA"):
        if label:
            return np.array(im.convert("P") if mode == "PA" else im)
        arr = np.array(im.convert("RGB"))
        return arr[..., 0] if (arr[..., 0] == arr[..., 1]).all() and (arr[..., 0] == arr[..., 2]).all() else arr
    if mode == "1":
        return np.array(im).astype(np.uint8)
    if mode in ("LA", "La"):
        return np.array(im)[..., 0]
    if mode in ("RGBA", "RGBa", "RGBX"):
        return np.array(im)[..., :3]
    if mode in ("CMYK", "YCbCr", "HSV", "LAB"):
        return np.array(im.convert("RGB"))
    return np.array(im)


def _read_tif(path: Path, *, label: bool) -> tuple[np.ndarray, dict, bool]:
    """Array ``S`` or ``(*S, C)`` (channel axis moved last, alpha dropped); extra holds the TIFF axes."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        axes = series.axes
        try:
            arr = series.asarray()
        except ValueError:  # a compression tifffile cannot decode without imagecodecs (e.g. DRIVE's LZW)
            arr = None
    if arr is None:
        arr, extra, colour = _read_pil(path, label=label)
        return arr, {"axes": axes, **extra}, colour
    channel_axes = [i for i, a in enumerate(axes) if a in "CS"]
    if len(channel_axes) > 1:
        raise ValueError(f"{path}: TIFF axes {axes!r} hold more than one channel axis")
    has_channels = bool(channel_axes)
    if has_channels:
        arr = np.moveaxis(arr, channel_axes[0], -1)
        if axes[channel_axes[0]] == "S" and arr.shape[-1] in (2, 4):  # gray + alpha or RGBA
            arr = arr[..., :-1]
        if arr.shape[-1] == 1:
            arr, has_channels = arr[..., 0], False
    return arr, {"axes": axes}, has_channels


def _read_h5(path: Path, key: str) -> tuple[np.ndarray, dict, tuple[float, ...] | None, bool]:
    import h5py

    with h5py.File(path, "r") as f:
        if key not in f or not isinstance(f[key], h5py.Dataset):
            keys = []
            f.visititems(lambda name, obj: keys.append(name) if isinstance(obj, h5py.Dataset) else None)
            raise ValueError(f"{path}: no dataset {key!r} in the HDF5 file; datasets found: {keys}")
        ds = f[key]
        arr = ds[()]
        channels_first = int(ds.attrs.get("channel_axis", -1)) == 0
        spacing = ds.attrs.get("spacing", ds.attrs.get("element_size_um", None))
    spacing = tuple(float(s) for s in np.atleast_1d(spacing)) if spacing is not None else None
    return arr, {"key": key}, spacing, channels_first


def _read_raw(path: str | Path, *, key: str | None, label: bool) -> tuple[np.ndarray, ImageMeta, bool]:
    """Read one file: (array with channels last, if any; meta with spatial shape; whether a channel axis exists)."""
    file, key = split_key(path, key)
    suffix = image_suffix(file)
    fmt = _FORMATS[suffix]
    if not file.is_file():
        raise ValueError(f"{file}: file not found")
    affine = None
    spacing: tuple[float, ...] | None = None
    has_channels = False
    try:
        if fmt == "nifti":
            import nibabel as nib

            img = nib.load(str(file))
            arr = np.asanyarray(img.dataobj) if label else img.get_fdata(dtype=np.float32)
            if arr.ndim == 5 and arr.shape[3] == 1:
                arr = arr[:, :, :, 0]
            if arr.ndim not in (2, 3, 4):
                raise ValueError(f"{file}: NIfTI with shape {arr.shape} is not 2D, 3D or 4D (3D + channels)")
            has_channels = arr.ndim == 4
            ndim = arr.ndim - has_channels
            zooms = img.header.get_zooms()[:ndim]
            spacing = tuple(float(z) for z in zooms)
            affine = np.asarray(img.affine, dtype=np.float64)
            extra = {"header": img.header.copy()}
        elif fmt in ("png", "gif", "jpg"):
            arr, extra, has_channels = _read_pil(file, label=label)
        elif fmt == "tif":
            arr, extra, has_channels = _read_tif(file, label=label)
        elif fmt == "hdf5":
            arr, extra, spacing, channels_first = _read_h5(file, key or ("label" if label else "image"))
            if channels_first:
                arr = np.moveaxis(arr, 0, -1)
                has_channels = True
        else:
            arr = np.load(file, allow_pickle=False)
            extra = {}
    except Exception as err:  # corrupt or unreadable file: name it
        if isinstance(err, ValueError) and str(file) in str(err):
            raise
        raise ValueError(f"{file}: cannot read {fmt} file ({type(err).__name__}: {err})") from err
    shape = tuple(int(s) for s in (arr.shape[:-1] if has_channels else arr.shape))
    if len(shape) not in (2, 3):
        raise ValueError(f"{file}: spatial shape {shape} is neither 2D nor 3D")
    if spacing is None or len(spacing) != len(shape):
        spacing = (1.0,) * len(shape)
    meta = ImageMeta(format=fmt, spacing=spacing, affine=affine, shape=shape, path=str(file), extra=extra)
    return arr, meta, has_channels


def read_image(paths: str | Path | Sequence[str | Path], *, key: str | None = None) -> tuple[np.ndarray, ImageMeta]:
    """Read an image as float32 ``(C, *S)``; several files are stacked as channels.

    Args:
        paths: one file or a sequence of files (one per channel, e.g. nnU-Net's ``_0000``, ``_0001``). An HDF5
            file may be written ``"file.h5::dataset"``.
        key: HDF5 dataset name when the path does not give one (default ``"image"``).

    Returns:
        ``(array, meta)``: array float32 of shape ``(C, *S)``; ``meta`` of the first file, with all files in
        ``meta.extra["paths"]``.

    Raises:
        ValueError: a file is missing, unreadable, holds NaN/Inf, or the files' spatial shapes differ.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if len(paths) == 0:
        raise ValueError("read_image: no image file given")
    arrays, meta0 = [], None
    for path in paths:
        arr, meta, has_channels = _read_raw(path, key=key, label=False)
        arr = np.moveaxis(arr, -1, 0) if has_channels else arr[None]
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise ValueError(f"{meta.path}: image holds {int((~np.isfinite(arr)).sum())} NaN/Inf values")
        if meta0 is None:
            meta0 = meta
        elif meta.shape != meta0.shape:
            raise ValueError(f"channel files differ in spatial shape: {meta0.path} is {meta0.shape}, "
                             f"{meta.path} is {meta.shape}")
        elif not np.allclose(meta.spacing, meta0.spacing, rtol=1e-4, atol=1e-6):
            raise ValueError(f"channel files differ in spacing: {meta0.path} has {meta0.spacing}, "
                             f"{meta.path} has {meta.spacing}")
        arrays.append(arr)
    meta0.extra["paths"] = [str(split_key(p)[0]) for p in paths]
    return (arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)), meta0


def read_label_raw(path: str | Path, *, key: str | None = None) -> tuple[np.ndarray, ImageMeta]:
    """Read a label file as stored (original dtype, spatial shape ``S``), before any mapping or threshold.

    RGB label images are accepted only when all colour channels are equal (the first is returned). Use this when
    raw values matter (e.g. an ignore value that a threshold would erase), then :func:`map_labels`.

    Args:
        path: label file (``"file.h5::dataset"`` allowed).
        key: HDF5 dataset name when the path does not give one (default ``"label"``).

    Returns:
        ``(raw, meta)``.
    """
    arr, meta, has_channels = _read_raw(path, key=key, label=True)
    if has_channels:
        if arr.ndim - 1 == len(meta.shape) and all(np.array_equal(arr[..., 0], arr[..., c])
                                                     for c in range(1, arr.shape[-1])):
            arr = arr[..., 0]
        else:
            raise ValueError(f"{meta.path}: a label map must have one channel, got {arr.shape[-1]} different "
                             "channels (colour-coded labels are not supported; store class indices)")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ValueError(f"{meta.path}: label map holds NaN/Inf values")
    return np.asarray(arr), meta


def map_labels(raw: np.ndarray, *, mapping: dict[int, int] | None = None, threshold: float | None = None,
               where: str = "labels") -> np.ndarray:
    """Turn raw label values into class indices (int64).

    Args:
        raw: label values as stored.
        mapping: raw value -> class index; values not in the mapping are kept.
        threshold: if given, values ``> threshold`` become 1 and the rest 0 (applied before ``mapping``).
        where: file or case name used in error messages.

    Raises:
        ValueError: non-integer values without a threshold.
    """
    if threshold is not None:
        out = (raw > threshold).astype(np.int64)
    else:
        if raw.dtype.kind == "f":
            if not np.array_equal(raw, np.round(raw)):
                raise ValueError(f"{where}: label map holds non-integer values; set a threshold to binarise it")
        elif raw.dtype.kind not in "iub":
            raise ValueError(f"{where}: label map has non-numeric dtype {raw.dtype}")
        out = raw.astype(np.int64)
    if mapping:
        src = out.copy()
        for value, cls in mapping.items():
            out[src == int(value)] = int(cls)
    return out


def read_label(path: str | Path, *, key: str | None = None, mapping: dict[int, int] | None = None,
               threshold: float | None = None) -> tuple[np.ndarray, ImageMeta]:
    """Read a label map as int64 ``S``.

    Args:
        path: label file (``"file.h5::dataset"`` allowed).
        key: HDF5 dataset name when the path does not give one (default ``"label"``).
        mapping: raw value -> class index (unmapped values stay as they are).
        threshold: values ``> threshold`` -> 1, else 0 (applied before ``mapping``).

    Returns:
        ``(labels, meta)`` with labels int64 of the file's spatial shape.
    """
    raw, meta = read_label_raw(path, key=key)
    return map_labels(raw, mapping=mapping, threshold=threshold, where=meta.path), meta


# ----------------------------------------------------------------------------------------------------- writing


def _label_dtype(labels: np.ndarray, where: str, allowed: Sequence[type]) -> np.dtype:
    """The first dtype of ``allowed`` that holds every label value."""
    lo, hi = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
    for dtype in allowed:
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dtype)
    names = "/".join(np.dtype(d).name for d in allowed)
    raise ValueError(f"{where}: label values {lo}..{hi} do not fit this format ({names}); use .nii.gz or .h5")


_INT_DTYPES = (np.uint8, np.uint16, np.int16, np.int32)


def _nifti_image(data: np.ndarray, meta: ImageMeta, spatial_ndim: int):
    """A Nifti1Image carrying the geometry (affine, qform/sform, zooms) of ``meta``."""
    import nibabel as nib

    header = meta.extra.get("header")
    if isinstance(header, nib.Nifti1Header) and meta.format == "nifti":
        hdr = header.copy()
        hdr.set_data_dtype(data.dtype)
        img = nib.Nifti1Image(data, meta.affine, header=hdr)
        img.set_qform(header.get_qform(), code=int(header["qform_code"]))
        img.set_sform(header.get_sform(), code=int(header["sform_code"]))
        img.header.set_slope_inter(1.0, 0.0)
        return img
    if meta.affine is not None:
        affine = np.asarray(meta.affine, dtype=np.float64)
    else:
        affine = np.eye(4)
        affine[np.arange(spatial_ndim), np.arange(spatial_ndim)] = meta.spacing[:spatial_ndim]
    return nib.Nifti1Image(data, affine)


def _write_pil(tmp: Path, array: np.ndarray, fmt: str) -> None:
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(array))
    if fmt == "gif":
        image.save(tmp, format="GIF", optimize=False)  # optimize would reorder the gray palette
    else:
        image.save(tmp, format={"png": "PNG", "jpg": "JPEG"}[fmt])


def write_label(path: str | Path, labels: np.ndarray, meta: ImageMeta) -> Path:
    """Write a label map ``S`` in the grid of the image described by ``meta`` (format from the path suffix).

    Args:
        path: output file. NIfTI copies the input's affine and qform/sform so the result overlays on the image
            (smallest integer dtype that fits); PNG and GIF are uint8; TIFF is uint8 or uint16; HDF5 writes dataset
            ``"label"`` (or ``"file.h5::key"``); ``.npy`` keeps int64. JPEG is refused (lossy).
        labels: integer label map of shape ``meta.shape``.
        meta: meta of the input image.

    Returns:
        The written path (written atomically).

    Raises:
        ValueError: the shape differs from ``meta.shape`` or the values do not fit the format.
    """
    labels = np.asarray(labels)
    file, key = split_key(path, "label")
    fmt = _FORMATS[image_suffix(file)]
    if labels.dtype.kind not in "iub":
        raise ValueError(f"{file}: labels must be integers, got dtype {labels.dtype}")
    if meta.shape and tuple(labels.shape) != tuple(meta.shape):
        raise ValueError(f"{file}: label shape {labels.shape} does not match the image shape {meta.shape}")
    if fmt == "jpg":
        raise ValueError(f"{file}: JPEG is lossy and cannot store labels; use .png, .tif or .nii.gz")
    if fmt in ("png", "gif") and labels.ndim != 2:
        raise ValueError(f"{file}: {fmt.upper()} holds 2D label maps, got shape {labels.shape}; use .nii.gz or .tif")

    allowed = {"png": (np.uint8,), "gif": (np.uint8,), "tif": (np.uint8, np.uint16)}.get(fmt, _INT_DTYPES)
    data = labels.astype(np.int64) if fmt == "npy" else labels.astype(_label_dtype(labels, str(file), allowed))

    def write(tmp: Path) -> None:
        if fmt == "nifti":
            import nibabel as nib

            nib.save(_nifti_image(data, meta, data.ndim), str(tmp))
        elif fmt in ("png", "gif"):
            _write_pil(tmp, data, fmt)
        elif fmt == "tif":
            import tifffile

            tifffile.imwrite(tmp, data, photometric="minisblack")
        elif fmt == "hdf5":
            import h5py

            with h5py.File(tmp, "w") as f:
                ds = f.create_dataset(key, data=data, compression="gzip")
                ds.attrs["spacing"] = np.asarray(meta.spacing, dtype=np.float64)
        else:
            np.save(tmp, data)

    return atomic_write(file, write)


def write_image(path: str | Path, array: np.ndarray, meta: ImageMeta) -> Path:
    """Write an image or probability map ``(C, *S)`` (or ``S`` for one channel) in the grid of ``meta``.

    Args:
        path: output file; the suffix picks the format:
            ``.nii``/``.nii.gz``: float32 (integer input keeps its dtype), channels on the 4th axis, input geometry
            copied (2D with C > 1 is stored ``(H, W, 1, C)``; prefer ``.tif`` for 2D).
            ``.tif``: pages ``(C, *S)`` tagged ``CYX``/``CZYX`` (float32 unless integer input).
            ``.h5``: dataset ``"image"`` (or ``"file.h5::key"``), ``channel_axis=0`` attribute when C > 1.
            PNG/JPG/GIF: 2D with 1 or 3 channels and values in 0..255 (uint8). ``.npy``: one channel only.
        array: ``(C, *S)`` or ``S``.
        meta: meta of the input image (geometry to copy).

    Returns:
        The written path. The write is atomic; :func:`read_image` reads every format back as the same
        ``(C, *S)`` array (except 2D NIfTI with C > 1, see above).
    """
    array = np.asarray(array)
    file, key = split_key(path, "image")
    fmt = _FORMATS[image_suffix(file)]
    spatial = tuple(meta.shape) if meta.shape else tuple(array.shape[1:])
    if tuple(array.shape) == spatial:
        array = array[None]
    elif tuple(array.shape[1:]) != spatial:
        raise ValueError(f"{file}: array shape {array.shape} is neither S nor (C, *S) for image shape {spatial}")
    n_channels = array.shape[0]
    if array.dtype.kind == "f":
        array = array.astype(np.float32)
        if not np.isfinite(array).all():
            raise ValueError(f"{file}: refusing to write NaN/Inf values")
    elif array.dtype.kind == "b":
        array = array.astype(np.uint8)
    if fmt in ("png", "gif", "jpg"):
        if len(spatial) != 2 or n_channels not in (1, 3):
            raise ValueError(f"{file}: {fmt.upper()} holds 2D images with 1 or 3 channels, got {array.shape}; "
                             "use .tif for probabilities or other channel counts")
        if array.size and (array.min() < 0 or array.max() > 255):
            raise ValueError(f"{file}: values {array.min()}..{array.max()} do not fit uint8; use .tif for "
                             "probabilities")
    if fmt == "npy" and n_channels != 1:
        raise ValueError(f"{file}: a .npy file holds one channel, got {n_channels}; use .tif, .nii.gz or .h5")

    def write(tmp: Path) -> None:
        if fmt == "nifti":
            import nibabel as nib

            data = np.moveaxis(array, 0, -1) if n_channels > 1 else array[0]
            if n_channels > 1 and len(spatial) == 2:  # (H, W, 1, C): channels must not become a spatial axis
                data = data[:, :, None, :]
            nib.save(_nifti_image(np.ascontiguousarray(data), meta, len(spatial)), str(tmp))
        elif fmt in ("png", "gif", "jpg"):
            data = np.round(array).astype(np.uint8)
            _write_pil(tmp, data[0] if n_channels == 1 else np.moveaxis(data, 0, -1), fmt)
        elif fmt == "tif":
            import tifffile

            axes = ("C" if n_channels > 1 else "") + ("ZYX" if len(spatial) == 3 else "YX")
            data = array if n_channels > 1 else array[0]
            tifffile.imwrite(tmp, data, photometric="minisblack", metadata={"axes": axes})
        elif fmt == "hdf5":
            import h5py

            with h5py.File(tmp, "w") as f:
                ds = f.create_dataset(key, data=array if n_channels > 1 else array[0], compression="gzip")
                if n_channels > 1:
                    ds.attrs["channel_axis"] = 0
                ds.attrs["spacing"] = np.asarray(meta.spacing, dtype=np.float64)
        else:
            np.save(tmp, array[0])

    return atomic_write(file, write)
