"""Adapters on tiny random models of every supported architecture (no mocks)."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM

from zerounlearn.adapters import (
    SUPPORTED_ARCHITECTURES,
    adapter_for,
    block_hidden,
    default_edit_layers,
    replace_block_hidden,
)
from zerounlearn.errors import LayerOutOfRange, PatchMismatch, UnsupportedArchitecture

D_MODEL, D_FF, LAYERS, VOCAB = 32, 48, 2, 96
_LLAMA_LIKE = dict(
    hidden_size=D_MODEL,
    intermediate_size=D_FF,
    num_hidden_layers=LAYERS,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=VOCAB,
    max_position_embeddings=64,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
# config class name -> (kwargs, expected adapter name)
CONFIGS: dict[str, tuple[dict, str]] = {
    "LlamaConfig": (_LLAMA_LIKE, "llama"),
    "MistralConfig": (_LLAMA_LIKE, "mistral"),
    "Qwen2Config": (_LLAMA_LIKE, "qwen2"),
    "Qwen3Config": ({**_LLAMA_LIKE, "head_dim": 8}, "qwen3"),
    "GemmaConfig": ({**_LLAMA_LIKE, "head_dim": 8}, "gemma"),
    "Gemma2Config": ({**_LLAMA_LIKE, "head_dim": 8}, "gemma2"),
    "Gemma3TextConfig": ({**_LLAMA_LIKE, "head_dim": 8}, "gemma3"),
    "SmolLM3Config": (_LLAMA_LIKE, "smollm3"),
    "Phi3Config": (_LLAMA_LIKE, "phi3"),
    "PhiConfig": (_LLAMA_LIKE, "phi"),
    "GPT2Config": (
        dict(
            n_embd=D_MODEL, n_inner=D_FF, n_layer=LAYERS, n_head=4, vocab_size=VOCAB, n_positions=64
        ),
        "gpt2",
    ),
    "GPTNeoXConfig": (
        dict(
            hidden_size=D_MODEL,
            intermediate_size=D_FF,
            num_hidden_layers=LAYERS,
            num_attention_heads=4,
            vocab_size=VOCAB,
            max_position_embeddings=64,
        ),
        "gpt_neox",
    ),
    "OPTConfig": (
        dict(
            hidden_size=D_MODEL,
            ffn_dim=D_FF,
            num_hidden_layers=LAYERS,
            num_attention_heads=4,
            vocab_size=VOCAB,
            word_embed_proj_dim=D_MODEL,
            max_position_embeddings=64,
        ),
        "opt",
    ),
}


def tiny_model(config_name: str) -> torch.nn.Module:
    kwargs, _ = CONFIGS[config_name]
    config = getattr(transformers, config_name)(**kwargs)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def model_and_name(request: pytest.FixtureRequest) -> tuple[torch.nn.Module, str]:
    return tiny_model(request.param), CONFIGS[request.param][1]


def test_every_adapter_is_covered() -> None:
    covered = {getattr(transformers, name)().model_type for name in CONFIGS}
    assert covered == set(SUPPORTED_ARCHITECTURES)


def test_adapter_found_with_family_name(model_and_name) -> None:
    model, name = model_and_name
    adapter = adapter_for(model)
    assert adapter.name == name
    assert adapter.num_layers(model) == LAYERS
    assert adapter.weight_shape(model, 0) == (D_MODEL, D_FF)


def test_weight_is_a_copy_of_shape_d_model_by_d_ff(model_and_name) -> None:
    model, _ = model_and_name
    adapter = adapter_for(model)
    w = adapter.get_weight(model, 1)
    assert w.shape == (D_MODEL, D_FF)
    w.add_(1.0)
    assert not torch.equal(adapter.get_weight(model, 1), w)


def test_w_times_k_is_the_down_projection(model_and_name) -> None:
    """W k + bias equals the module's output: proves the Conv1D transpose handling."""
    model, _ = model_and_name
    adapter = adapter_for(model)
    for layer in range(LAYERS):
        module = adapter.down_proj(model, layer)
        w = adapter.get_weight(model, layer).double()  # (d_model, d_ff)
        k = torch.randn(5, D_FF, generator=torch.Generator().manual_seed(layer))  # (n, d_ff)
        with torch.no_grad():
            out = module(k).double()  # (n, d_model)
        bias = getattr(module, "bias", None)
        if bias is not None:
            out = out - bias.double()
        torch.testing.assert_close(out, k.double() @ w.T, rtol=1e-5, atol=1e-5)


def test_set_weight_round_trip_in_place(model_and_name) -> None:
    model, _ = model_and_name
    adapter = adapter_for(model)
    param = adapter.down_proj(model, 0).weight
    ptr, dtype = param.data_ptr(), param.dtype
    original = adapter.get_weight(model, 0)
    new = torch.randn(D_MODEL, D_FF)
    adapter.set_weight(model, 0, new)
    assert torch.equal(adapter.get_weight(model, 0), new)
    assert param.data_ptr() == ptr and param.dtype == dtype
    assert adapter.down_proj(model, 0).weight is param
    adapter.set_weight(model, 0, original)
    assert torch.equal(adapter.get_weight(model, 0), original)


def test_set_weight_refuses_wrong_shape(model_and_name) -> None:
    model, _ = model_and_name
    adapter = adapter_for(model)
    with pytest.raises(PatchMismatch):
        adapter.set_weight(model, 0, torch.zeros(D_FF, D_MODEL))


def test_block_output_is_the_residual_stream(model_and_name) -> None:
    """The hooked block output equals hidden_states[layer + 1] of a plain forward."""
    model, _ = model_and_name
    adapter = adapter_for(model)
    captured: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        captured.append(block_hidden(output).clone())
        return replace_block_hidden(output, block_hidden(output))

    ids = torch.tensor([[1, 5, 9, 3, 7]])
    handle = adapter.block(model, 0).register_forward_hook(hook)
    try:
        with torch.no_grad():
            out = model(input_ids=ids, output_hidden_states=True)
    finally:
        handle.remove()
    assert captured[0].shape == (1, 5, D_MODEL)
    torch.testing.assert_close(captured[0], out.hidden_states[1])


def test_layer_out_of_range(model_and_name) -> None:
    model, _ = model_and_name
    with pytest.raises(LayerOutOfRange):
        adapter_for(model).get_weight(model, LAYERS)


def test_unsupported_architecture_lists_supported() -> None:
    config = transformers.BloomConfig(hidden_size=32, n_layer=2, n_head=4, vocab_size=VOCAB)
    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(UnsupportedArchitecture) as err:
        adapter_for(model)
    message = str(err.value)
    assert "bloom" in message
    for name in SUPPORTED_ARCHITECTURES:
        assert name in message


@pytest.mark.parametrize(
    ("num_layers", "expected"),
    [(30, [20, 21, 22]), (2, [1]), (1, [0]), (12, [7, 8, 9]), (3, [1, 2]), (4, [1, 2, 3]),
     (5, [2, 3, 4])],
)
def test_default_edit_layers(num_layers: int, expected: list[int]) -> None:
    """Layer 0 only in a one-layer model: its keys are (nearly) the token's embedding."""
    assert default_edit_layers(num_layers) == expected


def test_default_edit_layers_depth_and_count() -> None:
    assert default_edit_layers(28, relative_depth=0.6, count=3) == [16, 17, 18]
    assert default_edit_layers(32, relative_depth=0.6, count=3) == [18, 19, 20]
