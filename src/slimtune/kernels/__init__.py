"""Fast paths for LoRA training and serving, each with a plain-torch reference, chosen at run time.

- ``lora_linear``: the LoRA linear under custom autograd (few kernels, lean saved activations).
- ``dora_linear``: the same for DoRA, with the row norm computed once per call and no (out, in) temporary.
- ``lm_loss`` / ``causal_lm_loss``: the LM head on target positions only (the trainer's default loss for
  causal LMs); ``linear_cross_entropy``: that head's loss in chunks, never the whole logits.
- ``gathered_lora``: mixed-adapter batches (one adapter per row) in two products, BGMV/SGMV-style.
- ``compile_blocks``: every transformer block through ``torch.compile``, adapters included.
- ``fuse_model``: RMSNorm and the SwiGLU product of Llama-style decoders as one compiled kernel each way.

``config.use_fast(True | False | None)`` or ``SLIMTUNE_KERNELS=auto|fast|reference`` picks the path; ``auto``
(the default) takes the fast one on CUDA. They are torch ops under custom autograd: measured on an H200, they
beat the unfused module chain without Triton (see benchmarks/gpu_lora.py).
"""

from slimtune.kernels.config import (
    autocast_dtype,
    dora_recompute,
    enabled,
    fast_paths,
    mode,
    set_dora_recompute,
    use_fast,
)
from slimtune.kernels.fusions import compile_blocks, fuse_model, unfuse_model
from slimtune.kernels.gathered import gathered_lora, grouped_pays, row_runs, row_scales
from slimtune.kernels.lora import dora_linear, dora_norm, lora_linear, merge_pays
from slimtune.kernels.loss import causal_lm_loss, linear_cross_entropy, linear_cross_entropy_reference, lm_loss

__all__ = [
    "autocast_dtype",
    "causal_lm_loss",
    "compile_blocks",
    "dora_linear",
    "dora_norm",
    "dora_recompute",
    "enabled",
    "fast_paths",
    "fuse_model",
    "gathered_lora",
    "grouped_pays",
    "linear_cross_entropy",
    "linear_cross_entropy_reference",
    "lm_loss",
    "lora_linear",
    "merge_pays",
    "mode",
    "row_runs",
    "row_scales",
    "set_dora_recompute",
    "unfuse_model",
    "use_fast",
]
