"""`compile_frozen="reduce-overhead"` on CUDA: CUDA graphs of the frozen blocks give the eager model's logits and
side-network gradients, step after step (each tower forward starts a new CUDA-graph generation)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from s4v.models import create_model


@pytest.mark.usefixtures("compiled_triton")
def test_reduce_overhead_matches_eager_over_training_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    eager = create_model("tiny", 5, device="cuda")
    compiled = create_model("tiny", 5, device="cuda", compile_frozen="reduce-overhead")
    compiled.load_state_dict(eager.state_dict())
    eager.train(), compiled.train()
    g = torch.Generator(device="cuda").manual_seed(0)
    # 3 steps: Inductor's CUDA-graph trees warm up, record, then replay.
    for step in range(3):
        video = torch.randn(2, 8, 3, 64, 64, device="cuda", generator=g)
        labels = torch.randint(0, 5, (2,), device="cuda", generator=g)
        logits = {}
        for name, model in (("eager", eager), ("compiled", compiled)):
            model.zero_grad(set_to_none=True)
            logits[name] = model(video)
            F.cross_entropy(logits[name], labels).backward()
        torch.testing.assert_close(logits["compiled"], logits["eager"], rtol=1e-4, atol=1e-4, msg=f"step {step}")
        params = dict(compiled.named_parameters())
        for name, p in eager.named_parameters():
            if p.requires_grad:
                torch.testing.assert_close(params[name].grad, p.grad, rtol=1e-3, atol=1e-5, msg=f"{name} step {step}")
