"""A 2D network trained on slices of 3D volumes (data.slice_axis): sampling, slice-wise inference, end to end."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from torch import nn

from everylabel.annotations.kinds import Annotations, Kind
from everylabel.data.batch import Sample
from everylabel.data.sampling import PatchSampler, PreparedCase, squeeze_axis
from everylabel.engine.inference import slicewise_inference, sliding_window_inference
from everylabel.engine.predictor import predict
from everylabel.engine.trainer import train
from everylabel.experiments.config import load_config

TINY = ["network.features=[8, 16, 32]", "data.batch_size=2", "train.log_every=1", "train.val_every=2",
        "train.checkpoint_every=2", "inference.sw_batch_size=2"]


def _sample_3d() -> Sample:
    image = torch.arange(2 * 4 * 1 * 5, dtype=torch.float32).reshape(2, 4, 1, 5)
    return Sample(image=image, labels=torch.ones(1, 4, 1, 5, dtype=torch.int64),
                  valid=torch.ones(1, 4, 1, 5, dtype=torch.bool), roi=torch.ones(1, 4, 1, 5, dtype=torch.bool),
                  points=torch.tensor([[1.0, 0.0, 3.0]]), point_labels=torch.tensor([1]),
                  boxes=torch.tensor([[0.0, 0.0, 1.0, 3.0, 1.0, 4.0]]), box_labels=torch.tensor([1]),
                  tags=torch.tensor([0, 1, -1]), classes=torch.ones(3, dtype=torch.bool),
                  kinds=frozenset({Kind.MASK}), case_id="c")


def test_squeeze_axis_keeps_in_plane_geometry():
    s = squeeze_axis(_sample_3d(), 1)
    assert s.image.shape == (2, 4, 5) and s.labels.shape == (1, 4, 5)
    assert torch.equal(s.image, _sample_3d().image[:, :, 0])
    assert s.points.tolist() == [[1.0, 3.0]]
    assert s.boxes.tolist() == [[0.0, 1.0, 3.0, 4.0]]
    # a volume tag "present" says nothing about one slice; "absent" holds for every slice
    assert s.tags.tolist() == [0, -1, -1]


def test_squeeze_axis_rejects_thick_samples():
    with pytest.raises(ValueError, match="one voxel thick"):
        squeeze_axis(_sample_3d(), 0)


def test_sampler_draws_2d_patches_with_per_slice_boxes():
    rng = np.random.default_rng(0)
    labels = np.zeros((6, 7, 8), np.int64)
    labels[2:4, 2:5, 1:7] = 1
    box = np.array([[2, 2, 1, 4, 5, 7]], np.float32)
    ann = Annotations(labels=labels, boxes=box, box_labels=np.array([1]))
    case = PreparedCase(image=np.random.default_rng(1).random((1, 6, 7, 8), dtype=np.float32), ann=ann,
                        case_id="v", num_classes=2)
    sampler = PatchSampler([case], (6, 7, 1), 1.0, rng, slice_axis=2)
    for _ in range(10):
        s = sampler.sample()
        assert s.image.shape == (1, 6, 7) and s.labels.shape == (1, 6, 7)
        z = None
        for k in range(8):  # find which slice was drawn
            if np.array_equal(s.image[0].numpy(), case.image[0, :, :, k]):
                z = k
        assert z is not None and 1 <= z < 7  # foreground oversampling picks slices holding the object
        assert s.boxes.tolist() == [[2.0, 2.0, 4.0, 5.0]]
    with pytest.raises(ValueError, match="one voxel thick"):
        PatchSampler([case], (6, 7, 2), 1.0, rng, slice_axis=2)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slicewise_inference_equals_per_slice_sliding_window(axis):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1)).eval()
    vol = torch.randn(1, 2, 9, 11, 10)
    out = slicewise_inference(vol, (8, 8), net, axis, slices_per_call=4, overlap=0.5, sw_batch_size=3)
    assert out.shape == (1, 3, 9, 11, 10)
    for k in range(vol.shape[axis + 2]):
        sl = vol.select(axis + 2, k)
        ref = sliding_window_inference(sl, (8, 8), net, overlap=0.5)
        torch.testing.assert_close(out.select(axis + 2, k), ref, rtol=1e-5, atol=1e-6)


def _nifti_dataset(root) -> str:
    rng = np.random.default_rng(0)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    affine[:3, 3] = [10.0, -5.0, 3.0]
    cases = []
    for i in range(7):
        img = rng.normal(0, 0.3, (24, 20, 6)).astype(np.float32)
        lab = np.zeros((24, 20, 6), np.uint8)
        c = rng.integers(8, 14, 2)
        lab[c[0] - 4:c[0] + 4, c[1] - 3:c[1] + 3, 1:5] = 1
        img[lab > 0] += 2.0
        nib.save(nib.Nifti1Image(img, affine), root / f"v{i}_0000.nii.gz")
        nib.save(nib.Nifti1Image(lab, affine), root / f"v{i}.nii.gz")
        cases.append({"id": f"v{i}", "images": [f"v{i}_0000.nii.gz"], "mask": f"v{i}.nii.gz",
                      "split": "test" if i == 6 else "train"})
    manifest = {"name": "vols", "labels": {0: "background", 1: "blob"}, "cases": cases}
    path = root / "vols.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def test_slice_training_predicts_3d_volumes_in_input_geometry(tmp_path):
    data = _nifti_dataset(tmp_path)
    run = tmp_path / "run"
    cfg = load_config(None, TINY + ["train.steps=3", "data.slice_axis=2", "data.patch_size=[16, 16]",
                                    "data.val_fraction=0.2"])
    metrics = train(data, run, cfg, progress=False)
    assert metrics["completed"] and 0.0 <= metrics["best_val_dice"] <= 1.0  # slice-wise validation on 3D cases
    plan = yaml.safe_load((run / "plan.json").read_text())
    assert plan["spatial_dims"] == 2 and plan["slice_axis"] == 2 and plan["patch_size"] == [16, 16]
    outs = predict(run, data, tmp_path / "pred", split="test", progress=False)
    assert [p.name for p in outs] == ["v6.nii.gz"]
    pred, ref = nib.load(outs[0]), nib.load(tmp_path / "v6_0000.nii.gz")
    assert pred.shape == ref.shape
    np.testing.assert_allclose(pred.affine, ref.affine)


def test_slice_axis_on_2d_images_is_rejected(tmp_path):
    from everylabel.data.synthetic import make_dataset

    data = make_dataset(tmp_path, n_train=3, n_test=1, shape=(32, 32))
    cfg = load_config(None, TINY + ["train.steps=1", "data.slice_axis=0"])
    with pytest.raises(ValueError, match="slices of 3D volumes"):
        train(data, tmp_path / "run", cfg, progress=False)


def test_squeeze_axis_with_context_stacks_neighbours_as_channels():
    image = torch.randn(2, 4, 3, 5)  # C=2, slice axis 1 with 3 slices (context 1)
    s = Sample(image=image, labels=torch.arange(60).reshape(1, 4, 3, 5), valid=torch.ones(1, 4, 3, 5, dtype=torch.bool),
               roi=torch.ones(1, 4, 3, 5, dtype=torch.bool),
               points=torch.tensor([[1.0, 1.0, 3.0], [2.0, 0.0, 1.0]]), point_labels=torch.tensor([1, 0]),
               boxes=torch.tensor([[0.0, 0.0, 1.0, 3.0, 1.0, 4.0], [0.0, 1.0, 0.0, 2.0, 3.0, 2.0]]),
               box_labels=torch.tensor([1, 1]), tags=torch.tensor([0, 1]), classes=torch.ones(2, dtype=torch.bool),
               kinds=frozenset({Kind.MASK}), case_id="c")
    out = squeeze_axis(s, 1, context=1)
    assert out.image.shape == (6, 4, 5)
    for c in range(2):
        for j in range(3):
            assert torch.equal(out.image[c * 3 + j], image[c, :, j])
    assert torch.equal(out.labels, s.labels[:, :, 1])
    assert out.points.tolist() == [[1.0, 3.0]]  # only the point on the centre slice
    assert out.boxes.tolist() == [[0.0, 0.0, 2.0, 2.0]]  # only the box crossing the centre slice


@pytest.mark.parametrize("axis", [0, 2])
def test_slicewise_inference_with_context_sees_the_neighbouring_slices(axis):
    torch.manual_seed(0)
    net = nn.Conv2d(6, 2, 3, padding=1).eval()  # 2 channels x 3 slices
    vol = torch.randn(1, 2, 7, 9, 8)
    out = slicewise_inference(vol, (8, 8), net, axis, context=1, slices_per_call=3, overlap=0.5)
    padded = torch.nn.functional.pad(vol.movedim(axis + 2, 2), (0, 0, 0, 0, 1, 1))  # (1, C, D+2, a, b)
    for i in range(vol.shape[axis + 2]):
        stack = torch.cat([padded[0, c, i:i + 3] for c in range(2)], 0)[None]  # (1, 6, a, b)
        ref = sliding_window_inference(stack, (8, 8), net, overlap=0.5)
        torch.testing.assert_close(out.select(axis + 2, i), ref, rtol=1e-5, atol=1e-6)


def test_sampler_with_context_centres_on_foreground_slices_and_pads_the_edges():
    labels = np.zeros((6, 7, 8), np.int64)
    labels[2:4, 2:5, 0] = 1  # foreground only on the first slice: its context is padding
    case = PreparedCase(image=np.random.default_rng(1).random((1, 6, 7, 8), dtype=np.float32),
                        ann=Annotations(labels=labels), case_id="v", num_classes=2)
    sampler = PatchSampler([case], (6, 7, 3), 1.0, np.random.default_rng(0), slice_axis=2, slice_context=1)
    s = sampler.sample()
    assert s.image.shape == (3, 6, 7) and s.labels.sum() == 6
    assert torch.equal(s.image[0], torch.zeros(6, 7)) and np.array_equal(s.image[1].numpy(), case.image[0, :, :, 0])


def test_slice_context_training_predicts_volumes(tmp_path):
    data = _nifti_dataset(tmp_path)
    run = tmp_path / "run"
    cfg = load_config(None, TINY + ["train.steps=2", "data.slice_axis=2", "data.slice_context=2",
                                    "data.patch_size=[16, 16]", "data.val_fraction=0.2"])
    train(data, run, cfg, progress=False)
    plan = yaml.safe_load((run / "plan.json").read_text())
    assert plan["slice_context"] == 2 and plan["network"]["in_channels"] == 5
    outs = predict(run, data, tmp_path / "pred", split="test", progress=False)
    assert nib.load(outs[0]).shape == (24, 20, 6)
    with pytest.raises(ValueError, match="slice_context"):
        train(data, tmp_path / "bad", load_config(None, TINY + ["data.slice_context=1"]), progress=False)
