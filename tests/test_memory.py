"""Memory accounting: saved-tensor dedup, allocator replay, autocast emulation, optimizer states, plan."""

from __future__ import annotations

import gc

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from s4v.memory.plan import cli as plan_cli
from s4v.memory.runtime import GpuRuntime
from s4v.memory.step import PRECISIONS, Workload, account_step
from s4v.memory.tracker import LiveMemory, SavedTensors, block_bytes


def test_saved_tensors_counts_each_storage_once():
    # Linear saves its input x; ReLU saves its result r; the second Linear saves r again (same storage).
    mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(5, 8)
    with SavedTensors(exclude=list(mlp.parameters())) as saved:
        mlp(x).sum()
    assert saved.count == 2
    assert saved.nbytes == 5 * 8 * 4 + 5 * 16 * 4


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_live_memory_replays_allocations_and_frees(device):
    live = LiveMemory()
    with live:
        a = torch.empty(1000, device=device)  # 4000 B -> one 4096 B block
        b = a * 2
        view = b[:10]
        del b
        gc.collect()
        assert live.live == 2 * 4096  # the view keeps b's storage alive
        del view
        gc.collect()
        assert live.live == 4096
        c = torch.empty(3, device=device)
        assert live.peak == 2 * 4096 and live.live == 4096 + block_bytes(12)
        del a, c
        gc.collect()
    assert live.live == 0


def _tiny_model() -> nn.Module:
    return nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Conv1d(4, 4, 3, padding=1), nn.Linear(64, 8))


def test_autocast_emulation_matches_cpu_autocast():
    """Ops in both CUDA's and CPU's fp16 lists (linear, conv) get the same casts, outputs and saved bytes."""
    torch.manual_seed(0)
    model = _tiny_model()
    x = torch.randn(2, 4, 32, requires_grad=True)
    results = []
    for ctx in (torch.autocast("cpu", dtype=torch.float16), GpuRuntime("flash", emulate_autocast=torch.float16)):
        with SavedTensors(exclude=list(model.parameters())) as saved, ctx:
            y = model(x)
        results.append((y, saved.nbytes, saved.count))
    (y_ref, bytes_ref, n_ref), (y_emu, bytes_emu, n_emu) = results
    assert y_emu.dtype == y_ref.dtype == torch.float16
    torch.testing.assert_close(y_emu, y_ref)
    assert (bytes_emu, n_emu) == (bytes_ref, n_ref)


def test_emulation_applies_cuda_fp32_list_and_weight_cache():
    lin = nn.Linear(16, 16)
    x = torch.randn(3, 16)
    with GpuRuntime("flash", emulate_autocast=torch.float16) as rt:
        h = lin(x)
        assert h.dtype == torch.float16
        assert F.layer_norm(h, (16,)).dtype == torch.float32  # CUDA autocast runs layer_norm in fp32
        assert torch.softmax(h, -1).dtype == torch.float32
        first = {k: v[1] for k, v in rt._cache.items()}
        lin(x)
        # trainable weight and bias are cast once per region, like autocast's weight cache
        assert len(first) == 2 and all(rt._cache[k][1] is v for k, v in first.items())


def test_math_attention_matches_multihead_attention():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4, batch_first=True)
    x = torch.randn(2, 7, 32)
    ref = mha(x, x, x, need_weights=False)[0]
    with GpuRuntime("math"):
        out = mha(x, x, x, need_weights=False)[0]
    torch.testing.assert_close(out, ref)


def test_math_attention_keeps_the_probabilities_flash_does_not():
    q = torch.randn(2, 4, 50, 64, device="meta", requires_grad=True)
    sizes = {}
    for kernel in ("math", "flash"):
        with SavedTensors() as saved, GpuRuntime(kernel, emulate_autocast=torch.float16):
            F.scaled_dot_product_attention(q, q, q)
        sizes[kernel] = saved.nbytes
    probs_fp32, probs_fp16 = 2 * 4 * 50 * 50 * 4, 2 * 4 * 50 * 50 * 2
    assert sizes["math"] - sizes["flash"] >= probs_fp32 + probs_fp16 - 2 * 4 * 50 * 64 * 2 * 2


def _linear_workload(dim: int = 64, batch: int = 4) -> Workload:
    def build(device):
        m = nn.Sequential(nn.Linear(dim, dim), nn.Linear(dim, dim)).to(device)
        m[0].requires_grad_(False)
        return m

    return Workload("lin", build, lambda d: (torch.randn(batch, dim, device=d),), lambda m, i: m(i[0]).float().sum())


@pytest.mark.parametrize("precision", ["amp", "bf16", "fp32"])
def test_static_memory_follows_the_precision(precision):
    dim = 64
    mem = account_step(_linear_workload(dim), precision, "math")
    p = PRECISIONS[precision]
    trainable = dim * dim + dim
    wbytes = torch.empty(0, dtype=p.weights).element_size()
    assert mem.trainable_params == trainable and mem.frozen_params == trainable
    assert mem.frozen_weights == mem.trainable_weights == trainable * wbytes
    master = 4 if p.master else 0
    assert mem.optimizer_states >= trainable * (8 + master)  # exp_avg, exp_avg_sq (+ fp32 master)
    assert mem.optimizer_states < trainable * (8 + master) + 64  # + Adam's scalar step counters
    assert mem.peak >= mem.accounted


def test_meta_accounting_equals_real_cpu_run():
    """The allocator replay does not depend on the device: meta (no memory) == real CPU tensors."""
    torch.manual_seed(0)
    meta = account_step(_linear_workload(), "fp32", "math", device="meta")
    cpu = account_step(_linear_workload(), "fp32", "math", device="cpu")
    assert (meta.peak, meta.saved_activations, meta.optimizer_states) == (
        cpu.peak,
        cpu.saved_activations,
        cpu.optimizer_states,
    )


def test_plan_recommends_a_config_that_fits(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert (
        plan_cli(
            [
                "--gpu-mem",
                "0.05",
                "--backbone",
                "tiny",
                "--min-batch",
                "2",
                "--precision",
                "fp32",
                "--layers",
                "2",
                "--dims",
                "64",
                "128",
                "256",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    import json

    rec = json.loads(out.read_text())["recommended"]
    assert rec["layers"] == 2 and rec["max_batch"] >= 2 and rec["peak_gib"] <= 0.05
    from s4v.memory.workloads import MethodSpec, workload

    over = account_step(
        workload(MethodSpec("side4video", "tiny", rec["max_batch"] + 1, options=dict(layers=2, dim=rec["dim"]))),
        "fp32",
        "flash",
    )
    assert over.peak > 0.05 * 1024**3  # one more video would not fit
    assert "recommended" in capsys.readouterr().out


def test_fused_attention_route_is_exact_on_cpu_and_matches_meta_accounting():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4, batch_first=True)
    x = torch.randn(2, 7, 32)
    causal = torch.triu(torch.full((7, 7), float("-inf")), 1)
    ref = mha(x, x, x, need_weights=False, attn_mask=causal)[0]
    with GpuRuntime("flash"):
        out = mha(x, x, x, need_weights=False, attn_mask=causal)[0]
    torch.testing.assert_close(out, ref)
    from s4v.memory.workloads import MethodSpec, workload

    spec = MethodSpec("side4video", "tiny", 2, options=dict(layers=2, dim=64))
    cpu = account_step(workload(spec), "fp32", "flash", device="cpu")
    meta = account_step(workload(spec), "fp32", "flash", device="meta")
    # the GPU flash op also keeps two scalar RNG tensors (one 512-byte block each) that the CPU kernel does not
    assert abs(cpu.peak - meta.peak) <= 4 * 512 and abs(cpu.saved_activations - meta.saved_activations) <= 64
