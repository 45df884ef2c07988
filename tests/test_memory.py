import subprocess
import sys

import pytest

from seglab.utils.memory import tune_malloc

# Six training steps of the default job's U-Net in a fresh interpreter (as the entry points
# run); prints whether tuning applied and the median minor page faults of the last three steps.
_STEPS = """
import resource, statistics, sys, torch
from seglab.models import UNet
from seglab.utils.memory import tune_malloc
tuned = sys.argv[1] == "tuned" and tune_malloc()
torch.manual_seed(0)
net = UNet(in_channels=3, num_classes=6, base_channels=16, padding=True, batch_norm=True)
opt = torch.optim.Adam(net.parameters())
x, y = torch.randn(16, 3, 64, 64), torch.randint(0, 6, (16, 64, 64))
faults = []
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    opt.zero_grad()
    torch.nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(tuned, statistics.median(faults[3:]))
"""


def _step_faults(mode: str) -> tuple[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", _STEPS, mode], check=True, capture_output=True, text=True
    )
    tuned, faults = out.stdout.split()
    return tuned, float(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_tune_malloc_stops_per_step_page_faults():
    untuned, default_faults = _step_faults("default")
    tuned, tuned_faults = _step_faults("tuned")
    assert (untuned, tuned) == ("False", "True")
    # glibc's defaults give thousands of faults a step here (bench/malloc.py: ~14,000)
    assert default_faults > 1000 and tuned_faults < default_faults / 10, (
        default_faults,
        tuned_faults,
    )


def test_tune_malloc_refuses_values_mallopt_cannot_take():
    with pytest.raises(ValueError, match="mmap_threshold_mb=4096"):
        tune_malloc(mmap_threshold_mb=4096)


def test_entry_configs_default_to_tuning(compose_cfg):
    for name in ("train", "eval", "predict"):
        assert compose_cfg(name, quick=False).malloc_tuning is True
