"""Variants of the tiny random Llama (see tiny_model.py) for the vLLM API tests.

``lora TARGET``: a PEFT-format LoRA adapter for it (rank 8 on q_proj and v_proj, random weights), the
files ``vllm serve`` loads through ``/v1/load_lora_adapter``; written by hand, since the format is two
files and ``peft`` is not a dependency. ``classifier BASE TARGET``: the same network as a sequence
classifier with two labels (a random ``score`` head), which vLLM serves on ``/classify``.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

RANK = 8
#: The tiny Llama's shapes (tiny_model.py): hidden 64, 2 query heads and 1 key/value head of 32.
HIDDEN, Q_OUT, V_OUT, LAYERS = 64, 64, 32, 2


def build_lora(target: Path) -> Path:
    if (target / "adapter_config.json").is_file():
        return target
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(1)
    tensors = {}
    for i in range(LAYERS):
        for module, out in (("q_proj", Q_OUT), ("v_proj", V_OUT)):
            prefix = f"base_model.model.model.layers.{i}.self_attn.{module}"
            # Large enough that the adapter visibly changes the tiny model's (random) output.
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(RANK, HIDDEN, generator=gen) * 0.5
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(out, RANK, generator=gen) * 0.5
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": RANK, "lora_alpha": 2 * RANK,
        "target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.0, "bias": "none", "base_model_name_or_path": "tiny",
    }  # fmt: skip
    (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2))
    tmp.rename(target)
    return target


def build_classifier(base: Path, target: Path) -> Path:
    if (target / "config.json").is_file():
        return target
    import torch
    from safetensors.torch import load_file, save_file

    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(base, tmp)
    tensors = load_file(str(tmp / "model.safetensors"))
    gen = torch.Generator().manual_seed(2)
    tensors["score.weight"] = (torch.randn(2, HIDDEN, generator=gen) * 0.5).to(torch.bfloat16)
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((tmp / "config.json").read_text())
    config |= {"architectures": ["LlamaForSequenceClassification"], "num_labels": 2,
               "id2label": {"0": "calm", "1": "excited"}, "label2id": {"calm": 0, "excited": 1}}  # fmt: skip
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    tmp.rename(target)
    return target


if __name__ == "__main__":
    match sys.argv[1:]:
        case ["lora", target]:
            print(build_lora(Path(target)))
        case ["classifier", base, target]:
            print(build_classifier(Path(base), Path(target)))
        case _:
            sys.exit(f"usage: {sys.argv[0]} lora TARGET | classifier BASE TARGET")
