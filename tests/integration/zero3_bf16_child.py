"""Child process of test_zero3_bf16: one rank, gloo, the tiny model loaded in bf16 under ZeRO-3.

python tests/integration/zero3_bf16_child.py MODEL_DIR PREPARED_DIR PORT -> one JSON line
"""

import json
import os
import sys

os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[3], RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import deepspeed  # noqa: E402
import torch  # noqa: E402
from deepspeed.utils import set_z3_leaf_modules  # noqa: E402
from safetensors import safe_open  # noqa: E402

from vss_core import data, lora, model, train  # noqa: E402
from vss_core.config import LoraConfig, deepspeed_config, load_config  # noqa: E402

deepspeed.init_distributed(dist_backend="gloo")
cfg = load_config("conservative-2xb200", [])
ds = deepspeed_config(cfg)  # the GPU profile's bf16 ZeRO-3 settings (offload included), 1 rank here
ds["train_batch_size"] = ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"]
m = model.load_omni(sys.argv[1], dtype=torch.bfloat16, zero_config=ds)
dtypes = {n: str(getattr(t, "ds_tensor", t).dtype) for n, t in [*m.named_parameters(), *m.named_buffers()]}
with safe_open(os.path.join(sys.argv[1], "model.safetensors"), framework="pt") as f:
    want = f.get_tensor("model.layers.0.mlp.router.classifier.weight")
w = m.llm.model.layers[0].mlp.router.classifier.weight
with deepspeed.zero.GatheredParameters([w]):
    router_equal = torch.equal(w.data, want.float())
pm = lora.apply_lora(m, LoraConfig(rank=4, alpha=8, dropout=0.0, targets=["attention"]))
set_z3_leaf_modules(pm, model.zero3_leaf_classes())
params = [p for p in pm.parameters() if p.requires_grad]
engine, *_ = deepspeed.initialize(model=pm, config=ds, optimizer=train._optimizer(params, cfg))
out = engine(**model.collate(data.load_prepared(sys.argv[2])[:1]))
engine.backward(out.loss)
engine.step()
# The cpu-demo's fp32 model must be fp32: DeepSpeed drops an explicit zero.Init dtype on an accelerator
# without fp16 (the CPU) and builds bf16; load_omni lets the config's flags decide and checks the result.
ds32 = deepspeed_config(load_config("cpu-demo", []))
ds32["train_batch_size"] = ds32["train_micro_batch_size_per_gpu"] * ds32["gradient_accumulation_steps"]
m32 = model.load_omni(sys.argv[1], dtype=torch.float32, zero_config=ds32)
fp32_dtypes = sorted({str(p.ds_tensor.dtype) for p in m32.parameters()})
try:
    model.load_omni(sys.argv[1], dtype=torch.float32, zero_config=ds)  # a bf16 config for an fp32 model
    mismatch = None
except RuntimeError as exc:
    mismatch = str(exc)
print(
    json.dumps(
        {
            "dtypes": dtypes,
            "router_equal": router_equal,
            "loss": out.loss.item(),
            "fp32_dtypes": fp32_dtypes,
            "mismatch": mismatch,
        }
    )
)
