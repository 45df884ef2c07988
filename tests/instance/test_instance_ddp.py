"""model=maskrcnn data=coco under DDP: 2 CPU processes report the single-process mask AP."""

import json

import pytest
from coco_tree import write_shapes_tree
from support import run_cli

from seglab.eval import evaluate


@pytest.mark.slow
def test_ddp_cpu_mask_ap_equals_single_process(
    tmp_path, compose_cfg, small_maskrcnn_overrides, untrained_but_scored
):
    data = tmp_path / "coco"
    write_shapes_tree(data, counts={"train": 4, "val": 5})  # 5: ranks get 3 and 2 images
    files = "{train: {images: train, annotations: train.json}, val: {images: val, annotations: val.json}}"
    logs = tmp_path / "logs"
    result = run_cli(
        "train.py",
        "model=maskrcnn",
        "data=coco",
        "trainer=ddp_cpu",
        "trainer.max_epochs=1",
        f"data.data_dir={data}",
        f"data.split_files={files}",
        "data.class_names=null",
        "data.num_classes=2",
        "data.num_workers=0",
        "data.batch_size=1",
        "callbacks.rich_progress_bar=null",
        f"paths.log_dir={logs}",
        *small_maskrcnn_overrides,
        *untrained_but_scored,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (logs / "train" / "runs").iterdir()
    trained = json.loads((run / "metrics.json").read_text())
    ddp = trained["val"]  # the best checkpoint validated by 2 processes
    assert trained["best_checkpoint"]

    # the single process: evaluate() in this one (eval.py's function, without a second start)
    cfg = compose_cfg("eval", overrides=[f"ckpt_path={trained['best_checkpoint']}", "trainer=cpu"])
    single = evaluate(cfg)[0]["val"]

    assert single.keys() == ddp.keys() and "val/map_segm" in single
    assert single["val/map_segm"] > 0 and single["val/map_50_bbox"] > 0
    for key, value in single.items():
        if "/ma" in key:  # map_*, mar_*: exact
            assert ddp[key] == pytest.approx(value, abs=1e-6), key
        else:  # losses: means over the same images, summed in another order
            assert ddp[key] == pytest.approx(value, rel=1e-4), key
