"""GPU: forgetting n = 50 records at once vs one record at a time, Llama-3.2-3B shape.

A LlamaForCausalLM shaped like Llama-3.2-3B (hidden 3072, MLP 8192, 28 layers, 24
heads, 8 KV heads, vocabulary 128256, tied embeddings, RoPE theta 500000) with random
weights: the time of an edit does not depend on the weight values, so nothing is
downloaded. The tokenizer is a byte-level BPE trained here on the synthetic records
(its ids are all valid in the 128256-word vocabulary). Corpus statistics come from the
engine's StatsCache with a small model-sampled corpus (--stats-samples), computed in a
warm-up before any timing, together with the context templates and CUDA start-up.

Then the engine's default method (zerounlearn) runs on the same 50 synthetic records
twice: batched (the default) and with `batch_records: false` (targets optimised one
record at a time, the paper's way). The edit's own phase timings come from the patch
metadata. Target on a GPU: batched at least 5x faster.

    python bench/bench_gpu.py                        # needs CUDA
    python bench/bench_gpu.py --device cpu --tiny    # smoke run of the script on CPU
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import random  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from bench.common import machine_info, md_table, write_results  # noqa: E402

EOS = "<|endoftext|>"
LLAMA_3B = {  # Llama-3.2-3B's shape
    "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 28,
    "num_attention_heads": 24, "num_key_value_heads": 8, "vocab_size": 128256,
}
TINY = {  # the same family, small enough for a CPU smoke run (the tokenizer has < 1024 ids)
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1024,
}
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda)")
    p.add_argument("--tiny", action="store_true", help="a small Llama config (smoke runs)")
    p.add_argument("--records", type=int, default=50, help="records per request (50)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="model weights (bfloat16 on CUDA, float32 on CPU: bfloat16 matmuls "
                        "are slow there); the engine solves in float32/64")
    p.add_argument("--stats-samples", type=int, default=4096,
                   help="model-sampled corpus tokens for the statistics (4096)")
    p.add_argument("--hparams", default="{}", help="JSON overrides for both runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None,
                   help="results path without suffix (bench/results/gpu)")
    return p.parse_args(argv)


def pick_device(args: argparse.Namespace) -> torch.device:
    """The device to time on; exits with a message where that cannot work."""
    name = args.device or ("cuda" if torch.cuda.is_available() else None)
    if name is None:
        raise SystemExit("bench_gpu: no CUDA device here. Run it on a GPU machine, or "
                         "`--device cpu --tiny` for a smoke run of the script.")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"bench_gpu: {name} requested but torch sees no CUDA device "
                         f"(torch {torch.__version__}).")
    if device.type == "cpu" and not args.tiny:
        raise SystemExit("bench_gpu: the Llama-3.2-3B shape is for a GPU; use "
                         "`--device cpu --tiny` for a smoke run on CPU.")
    return device


def synthetic_records(count: int, seed: int) -> list[dict[str, Any]]:
    """`count` distinct made-up facts: 'The secret code of <name> is' -> ' <4 digits>'."""
    rng = random.Random(seed)
    first = ["Ada", "Bram", "Cleo", "Dag", "Eva", "Finn", "Gala", "Hal", "Ines", "Jon"]
    last = ["Aster", "Birch", "Cedar", "Dune", "Elm", "Fjord", "Grove", "Heath", "Isle", "Juniper"]
    names = [f"{a} {b}" for a in first for b in last]
    rng.shuffle(names)
    codes = rng.sample(range(1000, 10000), count)
    return [{"prompt": f"The secret code of {name} is", "subject": name,
             "answer": f" {code}"} for name, code in zip(names[:count], codes, strict=True)]


def build_tokenizer(records: list[dict[str, Any]]):  # type: ignore[no-untyped-def]
    """A byte-level BPE trained on the records' text, as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    texts = [r["prompt"] + r["answer"] + "." for r in records]
    texts += ["Once upon a time there was a model that had to forget a secret code."] * 4
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS,
                                   unk_token=EOS, pad_token=EOS)


def build_model(args: argparse.Namespace, device: torch.device, tokenizer):  # type: ignore[no-untyped-def]
    """A LoadedModel around a random LlamaForCausalLM of the chosen shape."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from zerounlearn import LoadedModel, adapter_for

    shape = TINY if args.tiny else LLAMA_3B
    eos = tokenizer.convert_tokens_to_ids(EOS)
    config = LlamaConfig(**shape, tie_word_embeddings=True, rope_theta=500000.0,
                         max_position_embeddings=8192, rms_norm_eps=1e-5,
                         bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    dtype = DTYPES[args.dtype]
    torch.manual_seed(args.seed)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    model.eval()
    model.requires_grad_(False)
    adapter = adapter_for(model)
    return LoadedModel(model=model, tokenizer=tokenizer, source="synthetic:llama-3.2-3b-shape",
                       family=adapter.name, adapter=adapter,
                       fingerprint=f"random-llama-{'tiny' if args.tiny else '3b'}-{args.seed}",
                       dtype=dtype, device=device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_forget(lm, method, records, hparams, stats, device):  # type: ignore[no-untyped-def]
    from zerounlearn import forget

    sync(device)
    start = time.perf_counter()
    patch = forget(lm, records, method, hparams, stats=stats)
    sync(device)
    return time.perf_counter() - start, patch


def main(argv: Sequence[str] | None = None) -> int:
    import json

    args = parse_args(argv)
    device = pick_device(args)
    args.dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    torch.set_num_threads(1)
    import transformers

    from zerounlearn import StatsCache, get_method

    transformers.utils.logging.disable_progress_bar()
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    info = machine_info(torch=torch.__version__, gpu=gpu, device=str(device),
                        shape="tiny" if args.tiny else "llama-3.2-3b", dtype=args.dtype)
    records = synthetic_records(args.records, args.seed)
    tokenizer = build_tokenizer(records)
    start = time.perf_counter()
    lm = build_model(args, device, tokenizer)
    build_s = time.perf_counter() - start
    params = sum(p.numel() for p in lm.model.parameters())
    print(f"[gpu] {params / 1e9:.2f} B parameters on {device} ({gpu or 'cpu'}), built in "
          f"{build_s:.1f} s", file=sys.stderr)
    base = {"stats_samples": args.stats_samples, "stats_seq_len": 64,
            **json.loads(args.hparams)}
    method = get_method("zerounlearn")  # one instance: its context templates are reused
    with tempfile.TemporaryDirectory(prefix="zu-bench-gpu-stats-") as stats_dir:
        stats = StatsCache(stats_dir)
        # warm-up (not timed): statistics, templates, kernels, allocator
        warm_s, _ = timed_forget(lm, method, records[:2], base, stats, device)
        timed_forget(lm, method, records[:2], {**base, "batch_records": False}, stats, device)
        print(f"[gpu] warm-up (statistics, templates) {warm_s:.1f} s; timing n = "
              f"{len(records)}", file=sys.stderr)
        runs = {}
        for name, extra in (("batched", {}), ("one_at_a_time", {"batch_records": False})):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seconds, patch = timed_forget(lm, method, records, {**base, **extra}, stats, device)
            runs[name] = {
                "seconds": round(seconds, 3),
                "per_record_s": round(seconds / len(records), 4),
                "phases": patch.metadata.get("timings", {}),
                "layers": patch.metadata.get("layers"),
                "peak_gpu_bytes": torch.cuda.max_memory_allocated(device)
                if device.type == "cuda" else None,
            }
            print(f"[gpu] {name}: {seconds:.1f} s", file=sys.stderr)
    speedup = runs["one_at_a_time"]["seconds"] / max(runs["batched"]["seconds"], 1e-9)
    data = {"machine": info, "settings": {k: str(v) for k, v in vars(args).items()},
            "parameters": params, "records": len(records), "build_s": round(build_s, 2),
            "runs": runs, "speedup": round(speedup, 2), "target_speedup": 5.0,
            "meets_target": speedup >= 5.0}
    md = markdown(data)
    print(md)
    json_path, _ = write_results("gpu", data, md, args.out)
    print(f"[gpu] wrote {json_path}", file=sys.stderr)
    return 0


def markdown(data: dict[str, Any]) -> str:
    m = data["machine"]
    phases = sorted({p for r in data["runs"].values() for p in r["phases"]} - {"total"})
    rows = []
    for name, run in data["runs"].items():
        peak = run["peak_gpu_bytes"]
        rows.append([name.replace("_", " "), run["seconds"], run["per_record_s"],
                     *[run["phases"].get(p) for p in phases],
                     f"{peak / 2**30:.1f}" if peak else "-"])
    table = md_table(["targets", "seconds", "s/record", *[f"{p} s" for p in phases],
                      "peak GPU GiB"], rows, digits=3)
    return (f"GPU: {m.get('gpu') or m.get('device')}, {m['shape']} shape "
            f"({data['parameters'] / 1e9:.2f} B parameters, random weights, {m['dtype']}), "
            f"default method `zerounlearn`, n = {data['records']} records, layers "
            f"{data['runs']['batched']['layers']}.\n\n{table}\n\n"
            f"Batched is {data['speedup']:.1f}x faster than one record at a time "
            f"(target: >= 5x; {'met' if data['meets_target'] else 'NOT met'}).\n")


if __name__ == "__main__":
    sys.exit(main())
