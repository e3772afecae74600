"""Run-directory artifacts: atomic writes, the DM/DSA .pt format, grids, storage sizes."""

import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from hyperdm.distill import artifacts as A


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    p = tmp_path / "x.json"
    A.write_json(p, {"a": 1})

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        A.write_json(p, {"a": 2})
    assert json.loads(p.read_text()) == {"a": 1}
    assert [f.name for f in tmp_path.iterdir()] == ["x.json"]  # no temp file left behind


def test_synthetic_round_trip_in_reference_format(tmp_path):
    rd = A.RunDir(tmp_path / "run")
    images = torch.randn(6, 1, 28, 28)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    rd.save_synthetic(images, labels, dataset="fashion-mnist", normalised=True)
    obj = torch.load(rd.synthetic, weights_only=True)
    assert isinstance(obj["data"], list) and len(obj["data"][0]) == 2  # {'data': [[images, labels]]}
    assert torch.equal(obj["data"][0][0], images) and torch.equal(obj["data"][0][1], labels)
    x, y, meta = A.load_synthetic(rd.path)  # run directory
    assert torch.equal(x, images) and torch.equal(y, labels) and meta["dataset"] == "fashion-mnist"
    x2, _, _ = A.load_synthetic(rd.synthetic)  # the .pt itself
    assert torch.equal(x2, images)


def test_load_reference_dm_file_with_several_experiments(tmp_path):
    # the reference saves {'data': [[img, lab], [img, lab], ...], 'accs_all_exps': ...}; the last pair is used
    a, b = torch.zeros(2, 3, 32, 32), torch.ones(2, 3, 32, 32)
    torch.save(
        {"data": [[a, torch.tensor([0, 1])], [b, torch.tensor([1, 0])]], "accs_all_exps": {}}, tmp_path / "res.pt"
    )
    x, y, _ = A.load_synthetic(tmp_path / "res.pt")
    assert torch.equal(x, b) and y.tolist() == [1, 0]


@pytest.mark.parametrize(
    "obj, match",
    [({"nodata": 1}, "not a synthetic set"), ({"data": [[torch.zeros(3, 4), torch.zeros(3)]]}, r"\[N, C, H, W\]")],
)
def test_load_bad_files(tmp_path, obj, match):
    torch.save(obj, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=match):
        A.load_synthetic(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError, match="run directory"):
        A.load_synthetic(tmp_path / "missing")


def test_grid_layout_and_png(tmp_path):
    x = torch.zeros(6, 3, 4, 5)
    for i in range(6):
        x[i] = i / 5
    g = A.image_grid(x, nrow=3, pad=2)
    assert g.shape == (2 * (4 + 2) + 2, 3 * (5 + 2) + 2, 3)
    assert g[2, 2, 0] == 0 and g[2 + 6, 2 + 2 * 7, 0] == 255  # image 0 at top-left, image 5 at (row 1, col 2)
    assert g[2 + 6, 2 + 7, 1] == round(4 / 5 * 255)
    assert g[0, 0, 0] == 255  # padding is white
    A.save_png(g, tmp_path / "g.png")
    back = np.asarray(Image.open(tmp_path / "g.png"))
    assert np.array_equal(back, g.numpy())


def test_storage_sizes():
    x = torch.rand(10, 1, 28, 28)
    s = A.storage_sizes(x)
    assert s["float32_bytes"] == 10 * 28 * 28 * 4 and s["uint8_bytes"] == 10 * 28 * 28
    # PNG of random noise cannot compress below the raw size by much, but each file has a header
    one = io.BytesIO()
    Image.fromarray(A.to_uint8(x)[0, 0].numpy(), mode="L").save(one, format="PNG", optimize=True)
    assert s["png_bytes"] > 10 * 57  # at least the PNG signature + IHDR + IEND per image
    assert abs(s["png_bytes"] / 10 - len(one.getvalue())) < 0.2 * len(one.getvalue())


def test_to_uint8_rounds_and_clamps():
    x = torch.tensor([-0.5, 0.0, 0.5, 1.0, 2.0, 1 / 255 * 0.49, 1 / 255 * 0.51])
    assert A.to_uint8(x).tolist() == [0, 0, 128, 255, 255, 0, 1]


def test_checkpoint_round_trip(tmp_path):
    rd = A.RunDir(tmp_path)
    assert rd.load_checkpoint() is None
    rd.save_checkpoint({"iteration": 3, "images": torch.arange(4.0)})
    st = rd.load_checkpoint()
    assert st["iteration"] == 3 and torch.equal(st["images"], torch.arange(4.0))


def test_output_names_keep_what_was_typed(tmp_path):
    assert A.output_path(tmp_path / "kept_0.01", ".npy").name == "kept_0.01.npy"
    assert A.output_path(tmp_path / "kept_0.5", ".json").name == "kept_0.5.json"
    assert A.output_path(tmp_path / "kept.npy", ".json", strip=(".npy", ".json")).name == "kept.json"
    assert A.output_path(tmp_path / "kept.npy", ".npy", strip=(".npy", ".json")).name == "kept.npy"
    assert A.output_path(tmp_path / "v1.2.tar", ".npy", strip=(".npy",)).name == "v1.2.tar.npy"


def test_load_torch_file_reads_plain_content_in_both_torch_formats(tmp_path):
    obj = {
        "data": [[torch.arange(6.0).view(1, 1, 2, 3), torch.tensor([2])]],
        "accs_all_exps": {"ConvNet": [0.5]},
        "n": None,
    }
    for zip_format in (True, False):
        p = tmp_path / f"f{zip_format}.pt"
        torch.save(obj, p, _use_new_zipfile_serialization=zip_format)
        back = A.load_torch_file(p)
        assert torch.equal(back["data"][0][0], obj["data"][0][0]) and back["accs_all_exps"] == {"ConvNet": [0.5]}


def test_load_torch_file_names_what_is_wrong(tmp_path):
    p = tmp_path / "x.pt"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        A.load_torch_file(p)
    p.write_bytes(b"")
    with pytest.raises(A.CorruptFileError, match=r"x.pt is empty \(0 bytes\), not a thing"):
        A.load_torch_file(p, what="a thing")
    np.save(tmp_path / "a.npy", np.zeros(3))
    with pytest.raises(A.CorruptFileError, match="is not a PyTorch file"):
        A.load_torch_file(tmp_path / "a.npy")
    with pytest.raises(IsADirectoryError):
        A.load_torch_file(tmp_path)


def test_run_dir_is_created_by_the_first_write_and_refuses_results(tmp_path):
    rd = A.RunDir(tmp_path / "run")
    assert not rd.path.exists() and rd.refusal(resume=False, overwrite=False) is None
    A.write_json(rd.metrics, {"loss": []})
    assert rd.existing() == ["metrics.json"]
    assert "already holds a run (metrics.json); pass --resume" in rd.refusal(resume=False, overwrite=False)
    assert rd.refusal(resume=True, overwrite=False) is None and rd.refusal(resume=False, overwrite=True) is None
    rd.save_synthetic(torch.zeros(1, 1, 2, 2), torch.zeros(1))
    assert "no checkpoint.pt to resume from" in rd.refusal(resume=True, overwrite=False)
    (rd.path / ".checkpoint.pt.x1.tmp").write_bytes(b"half")
    (rd.path / "mine.txt").write_text("keep")
    rd.clear()
    assert sorted(p.name for p in rd.path.iterdir()) == ["mine.txt"]
    f = tmp_path / "file"
    f.write_text("")
    assert "is a file, not a directory" in A.RunDir(f).refusal(resume=False, overwrite=False)


def test_a_failed_write_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    import errno

    p = tmp_path / "x.json"
    A.write_json(p, {"a": 1})

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match=os.strerror(errno.ENOSPC)) as e:
        A.write_json(p, {"a": 2})
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(p)
    assert json.loads(p.read_text()) == {"a": 1} and [f.name for f in tmp_path.iterdir()] == ["x.json"]
