"""Declared label tables and class metadata that the tree tests do not spell out."""

import numpy as np
import pytest
from PIL import Image
from trees import TREES, cityscapes_train_ids

from seglab.data.ade20k import ADE20K
from seglab.data.base import IGNORE, IndexPNG
from seglab.data.cityscapes import (
    CITYSCAPES,
    CityscapesDataModule,
    labelids_to_trainids,
    trainids_to_labelids,
)


def test_cityscapes_label_ids_map_to_train_ids():
    ids = np.arange(256, dtype=np.uint8)
    train = labelids_to_trainids(ids)
    assert train.dtype == np.uint8
    np.testing.assert_array_equal(train, cityscapes_train_ids(ids))
    # license plate (id -1) and any other out-of-table id become void in signed arrays too
    signed = labelids_to_trainids(np.array([[-1, 7], [26, 1000]], np.int32))
    np.testing.assert_array_equal(signed, [[255, 0], [13, 255]])
    wide = labelids_to_trainids(np.array([0, 24, -1]), ignore_index=300)
    assert wide.dtype == np.int32 and wide.tolist() == [300, 11, 300]
    assert trainids_to_labelids(np.array([0, 13, 18, 255])).tolist() == [7, 26, 33, 0]
    names = CITYSCAPES.views["semantic"]
    assert len(names) == 19 and names[13] == "car"
    assert CITYSCAPES.palette[0] == (128, 64, 128) and CITYSCAPES.palette[13] == (0, 0, 142)


def test_cityscapes_train_ids_files_read_as_label_ids(tmp_path):
    TREES["cityscapes"](tmp_path)
    by_ids = CityscapesDataModule(data_dir=str(tmp_path)).dataset("train")
    by_train = CityscapesDataModule(data_dir=str(tmp_path), label_type="trainIds").dataset("train")
    assert by_train.pairs[0][1].name.endswith("_gtFine_labelTrainIds.png")
    for i in range(3):
        np.testing.assert_array_equal(by_ids.load_mask(i), by_train.load_mask(i))
    moved = CityscapesDataModule(data_dir=str(tmp_path), label_type="trainIds", ignore_index=254)
    mask = moved.dataset("val").load_mask(0)
    assert (mask == 254).any() and not (mask == 255).any()
    by_train.pairs[1][1].unlink()
    with pytest.raises(
        FileNotFoundError, match=r"labelTrainIds\.png of .*csCreateTrainIdLabelImgs"
    ):
        CityscapesDataModule(data_dir=str(tmp_path), label_type="trainIds").setup("fit")
    with pytest.raises(ValueError, match="data.label_type='labelTrainIds'"):
        CityscapesDataModule(data_dir=str(tmp_path), label_type="labelTrainIds")


def test_ade20k_classes_palette_and_reduce_zero_label(tmp_path):
    names = ADE20K.views["semantic"]
    assert len(names) == len(set(names)) == 150 == len(ADE20K.palette)
    assert names[:3] == ("wall", "building", "sky") and names[-1] == "flag"
    assert names[12] == "person" and names[44] == "chest of drawers"
    assert ADE20K.palette[0] == (120, 120, 120)
    path = tmp_path / "a.png"
    Image.fromarray(np.array([[0, 1, 75, 150]], np.uint8)).save(path)
    read = IndexPNG(ADE20K.labels, ignore_index=255, dataset="ade20k")
    assert read(path).dtype == np.uint8 and read(path).tolist() == [[255, 0, 74, 149]]
    wide = IndexPNG(ADE20K.labels, ignore_index=300, dataset="ade20k")(path)
    assert wide.dtype == np.int32 and wide.tolist() == [[300, 0, 74, 149]]


def test_index_png_reads_16_bit_indices_and_names_the_allowed_values(tmp_path):
    path = tmp_path / "wide.png"
    Image.fromarray(np.array([[0, 300], [7, 299]], np.uint16)).save(path)
    read = IndexPNG({0: 0, 7: IGNORE, 299: 1, 300: 2}, ignore_index=9, dataset="x")
    assert read(path).tolist() == [[0, 2], [9, 1]]
    small = IndexPNG({0: 0, 1: 1, 2: 2, 5: IGNORE}, ignore_index=255, dataset="x")
    with pytest.raises(
        ValueError, match=r"holds label\(s\) \[7, 299, 300\]; expected 0..2, 5 \(5: ignored\)"
    ):
        small(path)
