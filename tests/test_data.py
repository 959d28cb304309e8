import numpy as np
import pytest
import torch

from windowguide import data


def test_digits_range_split_and_classes():
    train, test, everything = data.digits(24, "train"), data.digits(24, "test"), data.digits(24, "all")
    assert train.images.shape == (1500, 1, 24, 24) and len(test) == 297 and len(everything) == 1797
    assert train.images.min() >= -1 and train.images.max() <= 1 and train.num_classes == 10
    # the split is a partition of the 1797 images
    key = lambda d: {tuple(v) for v in d.images.flatten(1)[:, ::7].numpy().round(4).tolist()}
    assert not key(train) & key(test)
    assert sorted(torch.cat([train.labels, test.labels]).tolist()) == sorted(everything.labels.tolist())


def test_mirror_is_exactly_symmetric_and_seeded():
    d = data.mirror(50, 24, seed=3)
    assert torch.equal(d.images, d.images.flip(-1))
    assert torch.equal(d.images, data.mirror(50, 24, seed=3).images)
    assert not torch.equal(d.images, data.mirror(50, 24, seed=4).images)
    assert set(d.labels.tolist()) <= {0, 1, 2} and d.class_names == data.MIRROR_CLASSES
    assert d.images.min() >= -1 and d.images.max() <= 1
    with pytest.raises(ValueError, match="even size"):
        data.mirror(2, 23)


@pytest.mark.parametrize("layout", ["nhwc_uint8", "nchw_float01", "nhw_float_pm1"])
def test_npz_layouts_give_the_same_images(tmp_path, layout):
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (5, 8, 12, 3), dtype=np.uint8) if layout != "nhw_float_pm1" else \
        rng.integers(0, 256, (5, 8, 12), dtype=np.uint8)
    expect = torch.from_numpy(u8.astype(np.float32) / 127.5 - 1)
    expect = expect.permute(0, 3, 1, 2) if u8.ndim == 4 else expect[:, None]
    arr = {"nhwc_uint8": lambda: u8, "nchw_float01": lambda: u8.transpose(0, 3, 1, 2) / 255.0,
           "nhw_float_pm1": lambda: u8 / 127.5 - 1}[layout]()
    np.savez(tmp_path / "x.npz", images=arr, labels=np.arange(5) % 2)
    d = data.load_images(str(tmp_path / "x.npz"))
    assert d.images.shape == expect.shape and torch.allclose(d.images, expect, atol=1e-5)
    assert d.labels.tolist() == [0, 1, 0, 1, 0] and d.num_classes == 2


def test_image_folder_with_class_subfolders(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(1)
    arrays = {}
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            a = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(a).save(tmp_path / cls / f"{i}.png")
            arrays[(cls, i)] = a
    d = data.load_images(str(tmp_path))
    assert d.class_names == ("cat", "dog") and d.labels.tolist() == [0, 0, 1, 1]
    back = ((d.images + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    assert np.array_equal(back[3], arrays[("dog", 1)])


def test_bad_user_data_is_named(tmp_path):
    np.savez(tmp_path / "bad.npz", images=np.zeros((3, 5, 6, 7, 2)))
    with pytest.raises(ValueError, match="expected N x H x W"):
        data.load_images(str(tmp_path / "bad.npz"))
    np.savez(tmp_path / "range.npz", images=np.full((2, 4, 4), 3.0))
    with pytest.raises(ValueError, match=r"\[0, 1\] or \[-1, 1\]"):
        data.load_images(str(tmp_path / "range.npz"))
    np.savez(tmp_path / "labels.npz", images=np.zeros((2, 4, 4), np.uint8), labels=np.arange(3))
    with pytest.raises(ValueError, match="3 labels for 2 images"):
        data.load_images(str(tmp_path / "labels.npz"))
    with pytest.raises(ValueError, match="no dataset"):
        data.load(str(tmp_path / "missing"))
    from PIL import Image
    (tmp_path / "mixed").mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "mixed" / "a.png")
    Image.fromarray(np.zeros((4, 6), np.uint8)).save(tmp_path / "mixed" / "b.png")
    with pytest.raises(ValueError, match="different shapes"):
        data.load_images(str(tmp_path / "mixed"))
