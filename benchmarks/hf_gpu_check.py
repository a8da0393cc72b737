"""GPU check for HuggingFace and timm models: exactness on CUDA kernels, outputs unchanged.

Run on a machine with a CUDA GPU and ``transformers`` (and optionally ``timm``):
``python benchmarks/hf_gpu_check.py``. Without CUDA it says so and exits 0; ``--device cpu``
runs the same checks on the CPU (a dry run of the script itself).

For BERT, ViT, CLIP (both towers), Llama (grouped-query attention, causal; with and without
left padding, so that SDPA takes its flash kernel without a mask and the memory-efficient one
with a mask), a LLaVA-style model and timm ``vit_tiny_patch16_224`` — all built from configs
with random weights — in float32 and bfloat16, with the ``sdpa`` and ``eager`` implementations:

1. the model's outputs with the probe attached are compared with ``torch.equal`` to those
   without it;
2. `attnprobe.self_check` compares the probe's per-group masses with the model's own eager
   attention weights (a float32 eager reference in float32; in bfloat16 the reference is the
   bfloat16 eager run, so the difference includes the kernels' own bfloat16 rounding);
3. ``generate()`` with the LLaVA-style model: masses over prompt and decoding steps against one
   eager forward over the fed sequence.

Prints one line per case with the largest absolute difference; exits 1 if any float32 case
exceeds 1e-5 or any output differs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import attnprobe as ap


def _configs() -> dict[str, Callable[[], tuple[nn.Module, dict[str, Any], Any]]]:
    from transformers import (
        BertConfig,
        BertModel,
        CLIPConfig,
        CLIPModel,
        CLIPVisionConfig,
        LlamaConfig,
        LlamaForCausalLM,
        LlavaConfig,
        LlavaForConditionalGeneration,
        ViTConfig,
        ViTModel,
    )

    def llama_config() -> Any:
        return LlamaConfig(
            vocab_size=128,
            hidden_size=256,
            intermediate_size=512,
            num_hidden_layers=2,
            num_attention_heads=8,
            num_key_value_heads=2,
            max_position_embeddings=512,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        )

    def text_ids(padded: bool, length: int = 96) -> dict[str, Any]:
        ids = torch.randint(3, 100, (2, length))
        ids[:, 0] = 1
        if padded:
            ids[0, :17] = 0
            ids[0, 17] = 1
        return {"input_ids": ids, "attention_mask": (ids != 0).long()}

    def bert() -> tuple[nn.Module, dict[str, Any], Any]:
        model = BertModel(
            BertConfig(
                hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256
            )
        )
        inputs = text_ids(False, 64)
        inputs["input_ids"][1, 50:] = 0
        inputs["attention_mask"] = (inputs["input_ids"] != 0).long()
        types = torch.zeros_like(inputs["input_ids"])
        types[:, 30:] = 1
        inputs["token_type_ids"] = types
        return model, inputs, ap.auto_layout(model)

    def vit() -> tuple[nn.Module, dict[str, Any], Any]:
        model = ViTModel(
            ViTConfig(
                image_size=64,
                patch_size=8,
                hidden_size=128,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=256,
            ),
            add_pooling_layer=False,
        )
        return model, {"pixel_values": torch.randn(2, 3, 64, 64)}, ap.auto_layout(model)

    def clip(tower: str) -> Callable[[], tuple[nn.Module, dict[str, Any], Any]]:
        def build() -> tuple[nn.Module, dict[str, Any], Any]:
            model = CLIPModel(
                CLIPConfig(
                    text_config={
                        "hidden_size": 128,
                        "intermediate_size": 256,
                        "num_hidden_layers": 2,
                        "num_attention_heads": 4,
                        "max_position_embeddings": 64,
                    },
                    vision_config={
                        "image_size": 64,
                        "patch_size": 8,
                        "hidden_size": 128,
                        "intermediate_size": 256,
                        "num_hidden_layers": 2,
                        "num_attention_heads": 4,
                    },
                )
            )
            inputs = text_ids(False, 32)
            inputs["input_ids"][0, 20:] = 0
            inputs["attention_mask"] = (inputs["input_ids"] != 0).long()
            inputs["pixel_values"] = torch.randn(2, 3, 64, 64)
            return model, inputs, ap.auto_layout(model, tower=tower)

        return build

    def llama(padded: bool) -> Callable[[], tuple[nn.Module, dict[str, Any], Any]]:
        def build() -> tuple[nn.Module, dict[str, Any], Any]:
            model = LlamaForCausalLM(llama_config())
            return model, text_ids(padded), ap.auto_layout(model)

        return build

    def llava() -> tuple[nn.Module, dict[str, Any], Any]:
        vision = CLIPVisionConfig(
            image_size=64,
            patch_size=8,
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
        )
        model = LlavaForConditionalGeneration(
            LlavaConfig(
                vision_config=vision,
                text_config=llama_config(),
                image_token_id=100,
                vision_feature_layer=-1,
            )
        )
        image = [100] * 64
        ids = torch.tensor(
            [[0, 0, 0, 1, 5, 6, *image, 7, 8, 9], [1, 5, 6, 7, 8, 11, 12, *image, 9, 10]]
        )
        inputs = {
            "input_ids": ids,
            "attention_mask": (ids != 0).long(),
            "pixel_values": torch.randn(2, 3, 64, 64),
        }
        return model, inputs, ap.auto_layout(model)

    return {
        "BERT (segments, padding)": bert,
        "ViT": vit,
        "CLIP text tower": clip("text"),
        "CLIP vision tower": clip("vision"),
        "Llama GQA causal, no padding": llama(False),
        "Llama GQA causal, left padding": llama(True),
        "LLaVA-style": llava,
    }


def _to(inputs: dict[str, Any], device: str, dtype: torch.dtype) -> dict[str, Any]:
    return {
        k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in inputs.items()
    }


def _outputs_equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return bool(torch.equal(a, b))
    return all(torch.equal(v, b[k]) for k, v in a.items() if isinstance(v, torch.Tensor) and k in b)


def check_case(
    name: str,
    model: nn.Module,
    inputs: Any,
    layout: Any,
    device: str,
    dtype: torch.dtype,
    backend: str | None,
) -> tuple[bool, float]:
    model = model.to(device, dtype).eval()
    if backend is not None:
        model.set_attn_implementation(backend)

    def call() -> Any:
        return model(**inputs) if isinstance(inputs, dict) else model(inputs)

    with torch.no_grad():
        reference = call()
    with ap.probe(model, modalities=layout), torch.no_grad():
        probed = call()
    same = _outputs_equal(reference, probed)
    check = ap.self_check(model, inputs, layout)
    label = f"{name:32s} {str(dtype).removeprefix('torch.'):9s} {backend or 'SDPA':6s}"
    print(f"{label} outputs {'identical' if same else 'DIFFER':9s} max |Δ mass| {check.worst:.2e}")
    return same, check.worst


def check_generate(device: str) -> float:
    build = _configs()["LLaVA-style"]
    model, inputs, layout = build()
    model = model.to(device).eval()
    inputs = _to(inputs, device, torch.float32)
    new = 6
    with ap.probe(model, modalities=layout) as p, torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=new, min_new_tokens=new, do_sample=False, suppress_tokens=[100]
        )
    fed = out[:, : out.shape[1] - 1]
    extra = torch.ones(2, fed.shape[1] - inputs["input_ids"].shape[1], device=device).long()
    full = dict(
        inputs, input_ids=fed, attention_mask=torch.cat([inputs["attention_mask"], extra], 1)
    )
    check = ap.self_check(model, full, layout)  # one forward over the whole fed sequence
    result = p.result()
    worst = max(
        float((a.mass - b.mass).abs().nan_to_num().max())
        for a, b in zip(result.layers, _one_pass(model, full, layout).layers, strict=True)
    )
    print(
        f"{'LLaVA-style generate(), 6 tokens':32s} float32   sdpa   "
        f"max |Δ mass| vs one forward {worst:.2e}; that forward vs eager {check.worst:.2e}"
    )
    return max(worst, check.worst)


def _one_pass(model: nn.Module, inputs: dict[str, Any], layout: Any) -> ap.ProbeResult:
    with ap.probe(model, modalities=layout) as p, torch.no_grad():
        model(**inputs)
    return p.result()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check (use --device cpu for a dry run)")
        return 0
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {args.device}")
    if args.device == "cuda":
        print(torch.cuda.get_device_name())
    failures = []
    for dtype in (torch.float32, torch.bfloat16):
        for name, build in _configs().items():
            for backend in ("sdpa", "eager"):
                torch.manual_seed(0)
                model, inputs, layout = build()
                same, worst = check_case(
                    name,
                    model,
                    _to(inputs, args.device, dtype),
                    layout,
                    args.device,
                    dtype,
                    backend,
                )
                if not same or (dtype == torch.float32 and worst > 1e-5):
                    failures.append(f"{name} {dtype} {backend}")
    try:
        import timm
    except ImportError:
        print("timm not installed: timm ViT skipped")
    else:
        for dtype in (torch.float32, torch.bfloat16):
            torch.manual_seed(0)
            vit = timm.create_model("vit_tiny_patch16_224", pretrained=False)
            x = torch.randn(2, 3, 224, 224, device=args.device, dtype=dtype)
            same, worst = check_case(
                "timm vit_tiny_patch16_224", vit, x, ap.auto_layout(vit), args.device, dtype, None
            )
            if not same or (dtype == torch.float32 and worst > 1e-5):
                failures.append(f"timm {dtype}")
    torch.manual_seed(0)
    if check_generate(args.device) > 1e-5:
        failures.append("generate")
    print("FAILED: " + "; ".join(failures) if failures else "all float32 cases within 1e-5")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
