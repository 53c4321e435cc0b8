import pytest
import torch

import saelab
from saelab.activations import ActivationStore, keep_mask


def test_harvest_matches_plain_forward_hook(stories, medical_texts):
    hooks = ["resid_post.3", "mlp_out.1", "attn_out.2"]
    stores = saelab.harvest(
        stories, hooks, medical_texts, max_tokens=2048, ctx_len=64, progress=False
    )
    hf = stories._module
    got = {}
    modules = {
        "resid_post.3": hf.model.layers[3],
        "mlp_out.1": hf.model.layers[1].mlp,
        "attn_out.2": hf.model.layers[2].self_attn,
    }
    handles = [
        m.register_forward_hook(
            lambda mod, i, o, n=n: got.__setitem__(n, o[0] if isinstance(o, tuple) else o)
        )
        for n, m in modules.items()
    ]
    ids = stores[hooks[0]].tokens_CT
    with torch.no_grad():
        hf(ids)
    for h in handles:
        h.remove()
    for name in hooks:
        store = stores[name]
        ref = got[name][store.context_N.long(), store.position_N.long()]
        torch.testing.assert_close(store.get(torch.arange(len(store))), ref, atol=1e-5, rtol=0)
        assert (store.position_N > 0).all()  # BOS dropped
        assert len(store) + store.info.dropped_bos + store.info.dropped_sinks == ids.numel()


def test_keep_mask_drops_bos_and_sinks():
    acts = torch.randn(2, 50, 8)
    acts[1, 7] *= 1000
    keep = keep_mask(acts)
    assert not keep[:, 0].any() and not keep[1, 7]
    assert keep.sum() == 2 * 49 - 1


def test_cache_round_trip_and_float16(stories, medical_texts, tmp_path):
    memory = saelab.harvest(
        stories, "resid_post.2", medical_texts, max_tokens=1024, ctx_len=64, progress=False
    )
    cached = saelab.harvest(
        stories,
        "resid_post.2",
        medical_texts,
        max_tokens=1024,
        ctx_len=64,
        cache=tmp_path / "acts",
        progress=False,
    )
    assert sorted(p.name for p in (tmp_path / "acts").iterdir()) == [
        "manifest.json",
        "shard_00000.safetensors",
        "tokens.safetensors",
    ]
    again = ActivationStore.load(tmp_path / "acts")
    idx = torch.randperm(len(memory))[:100]
    assert torch.equal(cached.get(idx), memory.get(idx)) and torch.equal(
        again.get(idx), memory.get(idx)
    )
    assert torch.equal(again.tokens_CT, memory.tokens_CT)
    assert torch.equal(again.context_N, memory.context_N) and torch.equal(
        again.position_N, memory.position_N
    )

    half = saelab.harvest(
        stories,
        "resid_post.2",
        medical_texts,
        max_tokens=1024,
        ctx_len=64,
        cache=tmp_path / "half",
        dtype=torch.float16,
        progress=False,
    )
    x, x16 = memory.get(torch.arange(len(memory))), half.get(torch.arange(len(half)))
    assert x16.dtype == torch.float32 and not torch.equal(x16, x)
    torch.testing.assert_close(x16, x, rtol=1e-3, atol=1e-3)  # float16: ~3 significant digits
    assert (tmp_path / "half" / "shard_00000.safetensors").stat().st_size < 0.6 * (
        tmp_path / "acts" / "shard_00000.safetensors"
    ).stat().st_size


def test_multi_hookpoint_harvest_is_aligned(stories, medical_texts):
    """One keep-mask for every hookpoint of a harvest: row i is the same token in each store,
    and a position that is a sink at any hookpoint is dropped from all of them."""
    names = ["resid_post.0", "resid_post.1", "mlp_out.1", "attn_out.1"]
    # stories260K has no real sinks: a low sink factor makes each hookpoint flag its own outliers
    common = {"max_tokens": 4096, "ctx_len": 128, "sink_factor": 1.5, "progress": False}
    stores = saelab.harvest(stories, names, medical_texts, **common)
    first = stores[names[0]]
    for name in names[1:]:
        assert torch.equal(stores[name].context_N, first.context_N)
        assert torch.equal(stores[name].position_N, first.position_N)
        assert stores[name].info.dropped_sinks == first.info.dropped_sinks
    # the shared mask is the AND of each hookpoint's own mask
    alone = {n: saelab.harvest(stories, n, medical_texts, **common) for n in names}
    keys = [
        set(zip(s.context_N.tolist(), s.position_N.tolist(), strict=True)) for s in alone.values()
    ]
    shared = set(zip(first.context_N.tolist(), first.position_N.tolist(), strict=True))
    assert shared == set.intersection(*keys)
    assert any(len(k) > len(shared) for k in keys)  # some hookpoint flags sinks the others keep


def test_from_tensor():
    x = torch.randn(50, 8)
    store = ActivationStore.from_tensor(x, hookpoint="resid_post.1")
    assert len(store) == 50 and store.d_in == 8 and store.info.hookpoint == "resid_post.1"
    assert torch.equal(store.get(torch.tensor([3, 7])), x[[3, 7]])
    with pytest.raises(ValueError, match="NaN"):
        ActivationStore.from_tensor(torch.full((4, 2), float("nan")))


def test_unknown_model_and_hookpoint(stories):
    with pytest.raises(ValueError, match="unknown model"):
        saelab.load_model("gpt-17")
    with pytest.raises(ValueError, match=r"unknown hookpoint 'resid_post.5'.*0\.\.4"):
        saelab.harvest(stories, "resid_post.5", ["text"], progress=False)
