import pytest
import torch

import saelab
from saelab.activations import ActivationStore, keep_mask


def test_harvest_matches_plain_forward_hook(stories, medical_texts):
    hooks = ["resid_post.3", "mlp_out.1", "attn_out.2"]
    stores = saelab.harvest(stories, hooks, medical_texts, max_tokens=2048, ctx_len=64, progress=False)
    hf = stories._module
    got = {}
    modules = {"resid_post.3": hf.model.layers[3], "mlp_out.1": hf.model.layers[1].mlp,
               "attn_out.2": hf.model.layers[2].self_attn}
    handles = [m.register_forward_hook(lambda mod, i, o, n=n: got.__setitem__(n, o[0] if isinstance(o, tuple) else o))
               for n, m in modules.items()]
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


def test_cache_round_trip_is_memory_mapped(stories, medical_texts, tmp_path):
    store = saelab.harvest(stories, "resid_post.2", medical_texts, max_tokens=1024, ctx_len=64,
                           cache=tmp_path / "acts", progress=False)
    assert store._shards is not None  # reopened from disk
    again = ActivationStore.load(tmp_path / "acts")
    idx = torch.randperm(len(store))[:100]
    assert torch.equal(store.get(idx), again.get(idx))
    assert torch.equal(again.tokens_CT, store.tokens_CT)


def test_unknown_model_and_hookpoint(stories):
    with pytest.raises(ValueError, match="unknown model"):
        saelab.load_model("gpt-17")
    with pytest.raises(ValueError, match=r"unknown hookpoint 'resid_post.5'.*0\.\.4"):
        saelab.harvest(stories, "resid_post.5", ["text"], progress=False)
