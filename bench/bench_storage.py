"""Storage: bytes of a version against a full checkpoint, and time to materialise one.

A version is a patch: the full new down-projection W of each edited layer, computed on
its parent. Materialising version vk = load the base + apply the patches v1..vk in
order. This script, on the real engine:

1. makes one patch (zerounlearn.forget on a few world facts; statistics from the cache
   under .cache/bench-stats, computed first when missing), saves it (save_patch) and
   compares its bytes with the model saved in full (save_pretrained, safetensors);
2. times materialising a chain of k patches (k = 1, 5, 10: the one patch file copied
   k times, so k files are read; applying a patch costs the same whatever its values)
   against loading the full saved checkpoint, both through zerounlearn.load_model;
3. times the worker's own path (worker.model_cache.ModelCache over a real store
   holding v0..vk, sha256 check of each patch included), when the store allows.

Timings are the median of --repeats in one process: the page cache is warm (files just
written) and load_model hashes each weight file once per process (the fingerprint), so
these are warm-start figures; the first load of a process also reads the disk.

    python bench/bench_storage.py                                  # SmolLM2, 20k-token stats
    python bench/bench_storage.py --model .cache/tiny-gpt2 --facts tiny --chain 1,5 \\
        --hparams '{"layers": [1], "template_count": 0, "stats_samples": 2000, "stats_seq_len": 16}'
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
import transformers  # noqa: E402

from bench.common import REPO, machine_info, md_table, write_results  # noqa: E402
from zerounlearn import (  # noqa: E402
    BUILTIN_SMOLLM2,
    StatsCache,
    apply_patch,
    forget,
    load_model,
    load_patch,
    save_patch,
)
from zerounlearn.datasets import world_facts  # noqa: E402


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=BUILTIN_SMOLLM2,
                   help="model source: builtin SmolLM2 (default) or a local HF directory")
    p.add_argument("--facts", choices=("world", "tiny"), default="world",
                   help="records: the packaged world facts, or the tiny GPT-2's facts")
    p.add_argument("--records", type=int, default=3, help="records in the patch (3)")
    p.add_argument("--hparams", default="{}", help="JSON hyper-parameter overrides")
    p.add_argument("--stats-samples", type=int, default=20000,
                   help="corpus tokens for the statistics (20000); --hparams may override")
    p.add_argument("--stats-dir", type=Path, default=REPO / ".cache" / "bench-stats")
    p.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "engine",
                   help="where the builtin model is converted once (.cache/engine)")
    p.add_argument("--chain", default="1,5,10", help="patch-chain lengths k (1,5,10)")
    p.add_argument("--repeats", type=int, default=3, help="timings per figure, median (3)")
    p.add_argument("--no-store", action="store_true", help="skip the ModelCache figure")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    p.add_argument("--out", type=Path, default=None,
                   help="results path without suffix (bench/results/storage)")
    return p.parse_args(argv)


def records_for(kind: str, count: int) -> list[dict[str, Any]]:
    if kind == "tiny":
        from tests.support.tiny_model import tiny_facts

        facts = tiny_facts()
    else:
        facts = world_facts()
    keys = ("prompt", "subject", "answer")
    return [{k: f[k] for k in keys if f.get(k)} for f in facts[:count]]


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def dir_bytes(path: Path, suffix: str | None = None) -> int:
    return sum(f.stat().st_size for f in path.rglob("*")
               if f.is_file() and (suffix is None or f.name.endswith(suffix)))


def store_materialise(args: argparse.Namespace, work: Path, patches: list[Path],
                      ks: list[int]) -> dict[str, Any]:
    """Seconds for ModelCache.get(model, vk) on a fresh cache (base load + k patches)."""
    from store import ArtifactStore
    from worker.model_cache import ModelCache

    store = ArtifactStore(work / "store")
    model = store.create_model({"name": "bench", "source": args.model, "status": "ready",
                                "active_version": "v0", "architecture": None,
                                "num_layers": None, "edit_layers": None, "dtype": "float32"})
    store.publish_version(model["id"], {"parent": None, "method": None}, None)
    for i, path in enumerate(patches[: max(ks)]):
        store.publish_version(model["id"], {"parent": f"v{i}", "method": "zerounlearn"}, path)
    ModelCache(store, max_entries=1).get(model["id"], "v0")  # converts a builtin once: untimed
    out: dict[str, Any] = {}
    for k in ks:
        def once(k: int = k) -> None:
            cache = ModelCache(store, max_entries=1)
            cache.get(model["id"], f"v{k}")
        out[str(k)] = round(median_time(once, args.repeats), 3)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()
    ks = sorted({int(x) for x in args.chain.split(",") if x})
    hparams = {"stats_samples": args.stats_samples, **json.loads(args.hparams)}
    info = machine_info(torch=torch.__version__, torch_threads=args.threads, model=args.model)
    work = Path(tempfile.mkdtemp(prefix="zu-bench-storage-"))
    try:
        print(f"[storage] loading {args.model}", file=sys.stderr)
        lm = load_model(args.model, cache_dir=args.cache_dir)
        records = records_for(args.facts, args.records)
        print(f"[storage] forgetting {len(records)} records (statistics cached under "
              f"{args.stats_dir})", file=sys.stderr)
        start = time.perf_counter()
        patch = forget(lm, records, hparams=hparams, stats=StatsCache(args.stats_dir))
        forget_s = time.perf_counter() - start
        patch_path = work / "v1.safetensors"
        described = save_patch(patch, patch_path)
        full_dir = work / "full"
        lm.model.save_pretrained(full_dir)
        lm.tokenizer.save_pretrained(full_dir)
        full_weights = dir_bytes(full_dir, ".safetensors")
        patches = [patch_path]
        for i in range(2, max(ks) + 1):  # k distinct files, as a store holds them
            patches.append(work / f"v{i}.safetensors")
            shutil.copyfile(patch_path, patches[-1])

        def chain(k: int) -> None:
            model = load_model(args.model, cache_dir=args.cache_dir)
            for path in patches[:k]:
                apply_patch(model, load_patch(path))

        def one_patch() -> None:
            apply_patch(lm, load_patch(patch_path))

        print("[storage] timing materialisation", file=sys.stderr)
        load_base = median_time(lambda: load_model(args.model, cache_dir=args.cache_dir),
                                args.repeats)
        load_full = median_time(lambda: load_model(str(full_dir)), args.repeats)
        per_patch = median_time(one_patch, max(args.repeats, 5))
        chains = {str(k): round(median_time(lambda k=k: chain(k), args.repeats), 3)
                  for k in ks}
        store_figures: dict[str, Any] | None = None
        store_error = None
        if not args.no_store:
            try:
                store_figures = store_materialise(args, work, patches, ks)
            except Exception as exc:  # noqa: BLE001 - the store is optional here
                store_error = f"{type(exc).__name__}: {exc}"
    finally:
        shutil.rmtree(work, ignore_errors=True)

    data = {
        "machine": info,
        "settings": {k: str(v) for k, v in vars(args).items()},
        "patch": {"bytes": described["bytes"], "layers": described.get("layers"),
                  "records": len(records), "forget_s": round(forget_s, 2)},
        "checkpoint": {"weights_bytes": full_weights},
        "patch_fraction": round(described["bytes"] / full_weights, 5),
        "materialise_s": {
            "load_base": round(load_base, 3),
            "load_full_checkpoint": round(load_full, 3),
            "load_and_apply_one_patch_in_memory": round(per_patch, 4),
            "base_plus_chain": chains,
            "model_cache": store_figures,
            "model_cache_error": store_error,
        },
    }
    print(markdown(data, ks))
    json_path, _ = write_results("storage", data, markdown(data, ks), args.out)
    print(f"[storage] wrote {json_path}", file=sys.stderr)
    return 0


def markdown(data: dict[str, Any], ks: list[int]) -> str:
    p, mat = data["patch"], data["materialise_s"]
    mib = 1 << 20
    size = md_table(
        ["what", "bytes", "MiB", "of a full checkpoint"],
        [["version (patch, " + f"{p['records']} records, layers {p['layers']})", p["bytes"],
          p["bytes"] / mib, f"{100 * data['patch_fraction']:.2f}%"],
         ["full checkpoint (safetensors weights)", data["checkpoint"]["weights_bytes"],
          data["checkpoint"]["weights_bytes"] / mib, "100%"]], digits=2)
    rows = [["load the full saved checkpoint", mat["load_full_checkpoint"]],
            ["load the base (no patch)", mat["load_base"]],
            ["load + apply one patch (base already in memory)",
             mat["load_and_apply_one_patch_in_memory"]]]
    rows += [[f"base + chain of {k} patch{'es' if k > 1 else ''}", mat["base_plus_chain"][str(k)]]
             for k in ks]
    if mat["model_cache"]:
        rows += [[f"worker ModelCache.get(v{k}) (store, sha256 checks)", mat["model_cache"][str(k)]]
                 for k in ks]
    timing = md_table(["materialise", "seconds (median)"], rows, digits=3)
    note = (f"\n\nModelCache figure unavailable: {mat['model_cache_error']}"
            if mat.get("model_cache_error") else "")
    return (f"Storage, model `{data['machine']['model']}`:\n\n{size}\n\n{timing}{note}\n")


if __name__ == "__main__":
    sys.exit(main())
