"""The inductor-compiled torch path (kernels/compiled.py): equal to the eager one, used only where it
was compiled, and never a failed request when the compiler is missing or the compiled code fails."""

import pytest
import torch

from latentguard.kernels import compiled, dispatch, trajectory_stats
from latentguard.kernels.torch_stats import trajectory_stats_torch


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    compiled.reset()
    monkeypatch.setattr(dispatch, "_FALLBACKS", {})
    yield
    compiled.reset()


def test_compiled_statistics_equal_the_eager_ones_and_are_used_only_where_compiled(monkeypatch):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 16, 24, generator=g).to(torch.bfloat16)
    previous = torch.randn(2, 4, 16, 24, generator=g)
    x[0, 1, 3, 5] = float("nan")  # counted before the epilogue; the compiled code sees finite planes
    eager = {"alone": trajectory_stats(x), "change": trajectory_stats(x, previous=previous)}
    assert compiled.warm_up_compiled(16, 24)
    calls = []
    real = compiled._READY.copy()
    for key, fn in real.items():  # count the compiled calls, run the compiled code
        monkeypatch.setitem(compiled._READY, key, lambda *a, _fn=fn, _k=key: calls.append(_k) or _fn(*a))
    got = {"alone": trajectory_stats(x), "change": trajectory_stats(x, previous=previous)}
    threads = torch.get_num_threads()
    assert calls == [(threads, 16, 24, False), (threads, 16, 24, True)]
    for case in eager:
        for name, want in eager[case].as_dict().items():
            tol = 5e-4 if name == "sr_peak" else 2e-5  # kernels/stats.py oracle_tolerance
            torch.testing.assert_close(
                getattr(got[case], name), want, rtol=tol, atol=tol, msg=f"{case} {name}"
            )
    trajectory_stats(torch.randn(1, 3, 16, 24), previous=torch.randn(1, 3, 16, 24))  # another batch
    assert len(calls) == 3
    trajectory_stats(torch.randn(1, 4, 16, 16))  # a size not compiled: eager, not compiled now
    assert len(calls) == 3 and compiled.FAILED == {} and dispatch.fallbacks() == {}


def test_without_a_compiler_it_says_so_and_serves_eagerly(monkeypatch, tmp_path, caplog):
    import torch._inductor.config as inductor_config

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # nothing cached to fall back on
    monkeypatch.setattr(inductor_config.cpp, "cxx", (None, str(tmp_path / "no-such-c++")))
    torch._dynamo.reset()
    with caplog.at_level("ERROR", logger="latentguard.kernels.compiled"):
        assert not compiled.warm_up_compiled(8, 12)
    threads = torch.get_num_threads()
    ours = [r for r in caplog.records if r.name == "latentguard.kernels.compiled"]  # inductor logs too
    assert [r.getMessage().split(" (")[0] for r in ours] == [
        f"trajectory_stats: the compiled torch path failed to build for 8x12 at {threads} threads"
    ]
    assert list(dispatch.fallbacks().values()) == ["eager"]
    x = torch.randn(1, 2, 8, 12)
    torch.testing.assert_close(trajectory_stats(x).var, trajectory_stats_torch(x).var)


def test_compiled_code_that_fails_at_run_time_falls_back_for_that_size(monkeypatch):
    threads = torch.get_num_threads()

    def broken(*args):
        raise RuntimeError("compiled code broke")

    monkeypatch.setitem(compiled._READY, (threads, 8, 8, False), broken)
    x = torch.randn(1, 2, 8, 8)
    for _ in range(2):
        torch.testing.assert_close(trajectory_stats(x).crest, trajectory_stats_torch(x).crest)
    assert compiled._READY == {}  # not tried again
    assert list(dispatch.fallbacks()) == [f"the compiled torch path failed for 8x8 at {threads} threads"]
