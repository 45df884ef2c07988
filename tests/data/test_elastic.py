import albumentations as A
import cv2
import numpy as np
import pytest

from seglab.data.transforms import ElasticDeformation


def _smooth_image(height: int = 96, width: int = 128, seed: int = 0) -> np.ndarray:
    """A smooth random grey image in [0, 1] (float32), blobs a few tens of pixels wide."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((height // 16, width // 16)).astype(np.float32)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def test_masks_stay_in_label_set_and_keep_dtype():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    mask = rng.choice(np.array([0, 3, 7], dtype=np.uint8), size=(64, 80))
    instances = rng.integers(2**33, 2**40, (64, 80), dtype=np.int64)
    transform = A.Compose([ElasticDeformation(p=1.0)], seed=0)
    out = transform(image=image, mask=mask, masks=[instances, instances[::-1]])
    assert out["image"].shape == image.shape and out["image"].dtype == np.uint8
    assert out["mask"].dtype == np.uint8
    assert set(np.unique(out["mask"])) <= {0, 3, 7}
    for moved in out["masks"]:  # cv2.remap would narrow int64 ids to int32
        assert moved.dtype == np.int64 and np.isin(moved, instances).all()
    flags = rng.random((64, 80)) > 0.5
    assert ElasticDeformation(p=1.0)(image=image, mask=flags)["mask"].dtype == bool


def test_image_and_mask_stay_aligned():
    image = _smooth_image()
    threshold = float(np.median(image))
    mask = (image > threshold).astype(np.uint8)
    transform = A.Compose([ElasticDeformation(sigma=10.0, p=1.0)], seed=7)
    out = transform(image=image, mask=mask)
    assert not np.array_equal(out["mask"], mask), "the deformation should move something"
    disagree = (out["image"] > threshold) != out["mask"].astype(bool)
    # Bilinear and nearest sampling may differ only on the mask's one-pixel boundary band; a
    # field applied one pixel apart would disagree on about 3.5% of this image.
    kernel = np.ones((3, 3), np.uint8)
    band = cv2.dilate(out["mask"], kernel) != cv2.erode(out["mask"], kernel)
    assert not (disagree & ~band).any()
    assert disagree.mean() < 0.02


@pytest.mark.parametrize("interpolation", [cv2.INTER_LINEAR, cv2.INTER_CUBIC])
def test_sigma_zero_is_identity(interpolation):
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    mask = rng.integers(0, 4, (50, 70), dtype=np.uint8)
    weight = rng.random((50, 70)).astype(np.float32)
    transform = ElasticDeformation(sigma=0.0, interpolation=interpolation, p=1.0)
    transform.add_targets({"weight": "mask"})
    out = transform(image=image, mask=mask, weight=weight)
    np.testing.assert_array_equal(out["image"], image)
    np.testing.assert_array_equal(out["mask"], mask)
    np.testing.assert_array_equal(out["weight"], weight)


def test_field_is_cubic_upsampling_of_gaussian_grid():
    transform = ElasticDeformation(grid=3, sigma=10.0, p=1.0)
    transform.set_random_seed(5)
    height, width = 65, 81  # nodes fall on pixels 0, 32, 64 and 0, 40, 80
    params = transform.get_params_dependent_on_data({"shape": (height, width)}, {})
    nodes = np.random.default_rng(5).normal(0.0, 10.0, size=(2, 3, 3))
    dx = params["map_x"] - np.arange(width)
    dy = params["map_y"] - np.arange(height)[:, None]
    np.testing.assert_allclose(dx[::32, ::40], nodes[0], atol=1e-4)
    np.testing.assert_allclose(dy[::32, ::40], nodes[1], atol=1e-4)
    assert np.abs(np.diff(dx, axis=1)).max() < 2.0, "the field is smooth between nodes"


def test_same_seed_same_result():
    image = (_smooth_image() * 255).astype(np.uint8)

    def run(seed: int) -> np.ndarray:
        return A.Compose([ElasticDeformation(p=1.0)], seed=seed)(image=image)["image"]

    np.testing.assert_array_equal(run(3), run(3))
    assert not np.array_equal(run(3), run(4))


def test_composes_with_geometry_and_weight_map():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    mask = rng.integers(0, 3, (64, 64), dtype=np.uint8)
    weight = (1.0 + 2.5 * mask + 0.125).astype(np.float32)  # a float function of the mask

    def pipeline(*grey: A.BasicTransform) -> A.Compose:
        return A.Compose(
            [
                A.HorizontalFlip(p=0.5),
                A.VerticalFlip(p=0.5),
                A.RandomRotate90(p=1.0),
                A.Rotate(limit=30, border_mode=cv2.BORDER_REFLECT_101, p=1.0),
                ElasticDeformation(sigma=10.0, p=1.0),
                *grey,
            ],
            additional_targets={"weight": "mask"},
            seed=11,
        )

    plain = pipeline()(image=image, mask=mask, weight=weight)
    bright = pipeline(A.RandomBrightnessContrast(p=1.0))(image=image, mask=mask, weight=weight)

    out = bright["weight"]
    assert out.dtype == np.float32 and out.shape == (64, 64)
    np.testing.assert_array_equal(out, (1.0 + 2.5 * bright["mask"] + 0.125).astype(np.float32))
    np.testing.assert_array_equal(out, plain["weight"])
    np.testing.assert_array_equal(bright["mask"], plain["mask"])
    assert not np.array_equal(bright["image"], plain["image"])


def test_invalid_options_fail():
    with pytest.raises(ValueError, match="grid"):
        ElasticDeformation(grid=1)
    with pytest.raises(ValueError, match="sigma"):
        ElasticDeformation(sigma=-1.0)
    with pytest.raises(ValueError, match="interpolation"):
        ElasticDeformation(interpolation=cv2.INTER_NEAREST)
