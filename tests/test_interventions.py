"""The one module that opens nnsight traces: reads, edits and generation against plain
PyTorch forward hooks on the same Hugging Face module."""

import pytest
import torch

from saelab import interventions
from saelab.models import hook_module, parse_hookpoint


def hooked_logits(stories, ids_BT, edits):
    """Logits from the HF module with forward hooks doing `edits` (name -> fn on the output)."""
    hf = stories._module
    handles = []
    for name, fn in edits.items():
        module = hook_module(hf, parse_hookpoint(stories, name))

        def hook(mod, inputs, output, fn=fn):
            h = output[0] if isinstance(output, tuple) else output
            new = fn(h)
            return (new, *output[1:]) if isinstance(output, tuple) else new

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            return hf(ids_BT).logits
    finally:
        for handle in handles:
            handle.remove()


def test_read_hookpoints_in_any_order_match_forward_hooks(stories, medical_tokens):
    names = ["resid_post.3", "attn_out.1", "mlp_out.3"]  # deliberately not in execution order
    got = interventions.read_hookpoints(stories, names, medical_tokens)
    seen = {}

    def record(name):
        def fn(h):
            seen[name] = h.clone()
            return h

        return fn

    hooked_logits(stories, medical_tokens, {n: record(n) for n in names})
    for name, acts in zip(names, got, strict=True):
        assert acts.shape == (*medical_tokens.shape, 64)
        torch.testing.assert_close(acts, seen[name], atol=1e-5, rtol=0)


def test_clean_logits_and_edits_match_forward_hooks(stories, medical_tokens):
    clean = interventions.logits(stories, medical_tokens)
    torch.testing.assert_close(clean, hooked_logits(stories, medical_tokens, {}), atol=1e-5, rtol=0)

    d = torch.randn(64, generator=torch.Generator().manual_seed(0))
    keep = torch.zeros(medical_tokens.shape, dtype=torch.bool)
    keep[:, 5:9] = True
    edits = [
        interventions.add_direction(stories, "resid_post.2", d, 3.0, positions=keep),
        interventions.scale_direction(stories, "mlp_out.1", d, 0.0),
    ]
    unit = d / d.norm()

    def add_at(h):
        h = h.clone()
        h[keep] += 3.0 * d
        return h

    expected = hooked_logits(
        stories,
        medical_tokens,
        {"resid_post.2": add_at, "mlp_out.1": lambda h: h - (h @ unit)[..., None] * unit},
    )
    edited = interventions.logits(stories, medical_tokens, edits)
    torch.testing.assert_close(edited, expected, atol=1e-4, rtol=0)
    # a positioned edit: positions before the first edited one see the clean forward (causal
    # model), the edited ones do not
    added = interventions.logits(stories, medical_tokens, edits[:1])
    torch.testing.assert_close(added[:, :5], clean[:, :5], atol=1e-5, rtol=0)
    assert (added[:, 6] - clean[:, 6]).abs().max() > 1e-2


def test_splice_replaces_only_the_given_positions(stories, medical_tokens):
    keep = torch.rand(medical_tokens.shape, generator=torch.Generator().manual_seed(1)) > 0.5
    edit = interventions.splice(stories, "resid_post.1", torch.zeros_like, keep)

    def zero_at(h):
        h = h.clone()
        h[keep] = 0
        return h

    expected = hooked_logits(stories, medical_tokens, {"resid_post.1": zero_at})
    torch.testing.assert_close(
        interventions.logits(stories, medical_tokens, [edit]), expected, atol=1e-5, rtol=0
    )


def greedy_by_hand(stories, ids_1T, n_new, edits):
    """Greedy decoding without a KV cache: the whole sequence each step, edited by hooks."""
    ids = ids_1T
    for _ in range(n_new):
        next_id = hooked_logits(stories, ids, edits)[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, next_id], dim=1)
    return ids


def test_generation_steers_every_generated_token(stories):
    """With the KV cache each new token's forward has length 1: those positions are edited too."""
    ids = torch.tensor([[1, 400, 300, 200, 90]])
    d = torch.randn(64, generator=torch.Generator().manual_seed(2))
    plain = interventions.generate(stories, ids, max_new_tokens=8, do_sample=False)
    assert torch.equal(plain, greedy_by_hand(stories, ids, 8, {}))
    edit = interventions.add_direction(stories, "resid_post.2", d, 8.0)
    steered = interventions.generate(stories, ids, [edit], max_new_tokens=8, do_sample=False)
    assert torch.equal(
        steered, greedy_by_hand(stories, ids, 8, {"resid_post.2": lambda h: h + 8.0 * d})
    )
    assert not torch.equal(steered, plain)
    # steering the prompt alone is not the same: the generated positions were steered
    prompt_only = greedy_by_hand(stories, ids, 8, {})
    assert not torch.equal(steered[:, 5:], prompt_only[:, 5:])


def test_position_masks_are_refused_during_generation(stories):
    keep = torch.ones(1, 3, dtype=torch.bool)
    edit = interventions.add_direction(stories, "resid_post.2", torch.ones(64), 1.0, positions=keep)
    with pytest.raises(ValueError, match="positions=None"):
        interventions.generate(stories, torch.tensor([[1, 2, 3]]), [edit], max_new_tokens=2)


def test_reads_after_edits_see_the_edited_model(stories, medical_tokens):
    d = torch.randn(64, generator=torch.Generator().manual_seed(3))
    keep = torch.zeros(medical_tokens.shape, dtype=torch.bool)
    keep[:, 10] = True
    edit = interventions.add_direction(stories, "resid_post.1", d, 5.0, positions=keep)
    names = ["resid_post.3", "resid_post.1", "resid_post.0"]
    got = interventions.read_hookpoints(stories, names, medical_tokens, [edit])
    seen = {}

    def record(name, add):
        def fn(h):
            h = h.clone()
            if add:
                h[keep] += 5.0 * d
            seen[name] = h.clone()
            return h

        return fn

    hooked_logits(
        stories,
        medical_tokens,
        {
            "resid_post.0": record("resid_post.0", False),
            "resid_post.1": record("resid_post.1", True),
            "resid_post.3": record("resid_post.3", False),
        },
    )
    for name, acts in zip(names, got, strict=True):
        torch.testing.assert_close(acts, seen[name], atol=1e-5, rtol=0)
    clean = interventions.read_hookpoints(stories, ["resid_post.3"], medical_tokens)[0]
    assert (got[0][:, 10] - clean[:, 10]).abs().max() > 1e-2  # the edit reached layer 3
    torch.testing.assert_close(got[0][:, :10], clean[:, :10], atol=1e-5, rtol=0)  # causal


def test_generation_runs_its_full_length_past_end_of_text(stories):
    """Name the greedy first token end-of-text: generation still returns exactly
    max_new_tokens new ids (end-of-text is held off) instead of leaving nnsight's bounded step
    loop waiting for steps that never come."""
    ids = torch.tensor([[1, 400, 300]])
    first = int(interventions.logits(stories, ids)[0, -1].argmax())
    edit = interventions.add_direction(stories, "resid_post.2", torch.ones(64), 0.0)
    out = interventions.generate(
        stories, ids, [edit], max_new_tokens=6, do_sample=False, eos_token_id=first
    )
    assert out.shape == (1, 3 + 6) and first not in out[0, 3:].tolist()
