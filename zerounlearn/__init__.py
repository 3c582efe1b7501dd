"""ZeroUnlearn engine: forget facts in language models by closed-form weight edits.

The public API (docs/design.md) is re-exported here lazily: `import zerounlearn` is
cheap and does not import torch until a name that needs it is used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    # records.py
    "ForgetRecord": "records", "Neighbor": "records", "validate_records": "records",
    "record_from_dict": "records", "record_to_dict": "records",
    # tokens.py
    "encode_prompt": "tokens", "encode_continuation": "tokens",
    "subject_last_index": "tokens", "answer_batch": "tokens", "prompt_batch": "tokens",
    "score_answers": "tokens", "max_positions": "tokens", "AnswerBatch": "tokens",
    # errors.py
    "EngineError": "errors", "InvalidRecord": "errors", "InvalidHyperParameters": "errors",
    "LayerOutOfRange": "errors", "UnsupportedArchitecture": "errors",
    "ModelLoadError": "errors", "UnknownMethod": "errors", "DuplicateMethod": "errors",
    "NonFiniteResult": "errors", "PatchMismatch": "errors",
    # loading.py
    "BUILTIN_SMOLLM2": "loading", "LoadedModel": "loading", "load_model": "loading",
    "resolve_source": "loading", "inspect_model_source": "loading",
    # adapters.py
    "ArchitectureAdapter": "adapters", "adapter_for": "adapters",
    "SUPPORTED_ARCHITECTURES": "adapters", "default_edit_layers": "adapters",
    # patch.py
    "Patch": "patch", "apply_patch": "patch", "save_patch": "patch", "load_patch": "patch",
    # stats.py
    "CorpusSpec": "stats", "StatsCache": "stats",
    # evaluate.py
    "evaluate": "evaluate", "DEFAULT_REFERENCE_TEXTS": "evaluate",
    # methods/registry.py
    "register_method": "methods.registry", "get_method": "methods.registry",
    "list_methods": "methods.registry", "UnlearningMethod": "methods.registry",
    # api.py, config.py, templates.py
    "forget": "api", "resolve_hparams": "config", "default_layers": "config",
    "TemplateCache": "templates",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'zerounlearn' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"zerounlearn.{module}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
