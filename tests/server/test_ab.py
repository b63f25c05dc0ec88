"""`latentguard ab`: in process and against a live server over gRPC."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from latentguard.server.cli import app
from latentguard.server.config import Settings
from latentguard.server.offline import ab
from latentguard.server.offline.ab_sources import InProcessSource

from .grpc_harness import ServerThread, make_settings

PROMPTS = ["a red fox in the snow", "a lighthouse at dusk"]


@pytest.fixture(scope="module")
def source():
    return InProcessSource(Settings())


def compare(source, baseline: str, candidate: str, drill: str = "", seeds: int = 2) -> ab.AbReport:
    pairs = ab.run_pairs(source, baseline, candidate, ab.pair_grid(PROMPTS, seeds), candidate_drill=drill)
    return ab.compare(pairs, source.info(baseline), source.info(candidate), ab.Gates(), drill=drill)


def test_baseline_against_itself_is_acceptable_with_zero_divergence(source):
    r = compare(source, "tiny-sd3", "tiny-sd3")
    assert r.acceptable
    assert all(d["x0_rel_l2"]["mean"] == 0 for d in r.divergence)
    assert r.images["identical"] == r.pairs == 4
    assert all(d["wilcoxon_p"] == 1.0 for n, d in r.detectors.items() if n != "any")
    json.dumps(r.to_dict(), allow_nan=False)  # inf PSNR is written as null, not Infinity


def test_int4_diverges_more_than_fp8(source):
    fp8, int4 = compare(source, "tiny-sd3", "tiny-sd3-fp8"), compare(source, "tiny-sd3", "tiny-sd3-int4")
    final = {name: r.divergence[-1]["x0_rel_l2"]["mean"] for name, r in (("fp8", fp8), ("int4", int4))}
    assert 0 < final["fp8"] < final["int4"], final
    assert fp8.images["psnr_db"]["mean"] > int4.images["psnr_db"]["mean"] > 20
    passed = {
        name: {g["gate"].split(" (")[0]: g["passed"] for g in r.gates}
        for name, r in (("fp8", fp8), ("int4", int4))
    }
    # FP8 keeps the picture; int4 moves x0_hat past the 0.25 gate and the verdict follows it
    assert passed["fp8"]["final x0_hat divergence"] and passed["fp8"]["final image PSNR"]
    assert passed["fp8"]["final image SSIM"]
    assert not passed["int4"]["final x0_hat divergence"] and not int4.acceptable
    assert int4.cost["candidate"]["transformer_weights_mb"] < fp8.cost["candidate"]["transformer_weights_mb"]
    assert fp8.cost["candidate"]["transformer_weights_mb"] < fp8.cost["baseline"]["transformer_weights_mb"]


def test_candidate_with_a_drill_is_not_acceptable(source):
    r = compare(source, "tiny-sd3", "tiny-sd3-int4", drill="blur:step=4", seeds=3)
    assert not r.acceptable
    failed = {g["gate"] for g in r.gates if not g["passed"]}
    assert "flag rate increase (any detector)" in failed
    smooth = r.detectors["over_smoothing"]
    assert smooth["candidate_flag_rate"] == 1.0 and smooth["baseline_flag_rate"] == 0.0
    assert smooth["mcnemar_p"] == pytest.approx(2 / 2**6)  # 6 discordant pairs, all one way
    assert smooth["wilcoxon_p"] < 0.05


def test_ab_cli_against_a_live_server_over_grpc(tmp_path):
    server = ServerThread(make_settings()).start()
    try:
        runner = CliRunner()
        args = ["ab", "--baseline", "tiny-sd3", "--target", server.target, "--seeds", "1"]
        prompts = tmp_path / "prompts.txt"
        prompts.write_text("\n".join(PROMPTS) + "\n")
        ok = runner.invoke(
            app,
            [
                *args,
                "--candidate",
                "tiny-sd3-fp8",
                "--prompts",
                str(prompts),
                "--max-x0-divergence",
                "1",  # this checks the CLI path, not the gate (fp8 measures 0.105 on 32 pairs: README, A/B)
                "--out",
                str(tmp_path / "ok"),
            ],
        )
        assert ok.exit_code == 0, ok.output
        bad = runner.invoke(
            app,
            [
                *args,
                "--candidate",
                "tiny-sd3-fp8",
                "--prompts",
                str(prompts),
                "--candidate-drill",
                "blur:step=4",
                "--out",
                str(tmp_path / "bad"),
            ],
        )
        assert bad.exit_code == 1, bad.output
        unknown = runner.invoke(app, [*args, "--candidate", "nope", "--out", str(tmp_path / "x")])
        assert unknown.exit_code == 2 and "unknown deployment 'nope'" in unknown.output
    finally:
        server.stop()
    report = json.loads((tmp_path / "ok" / "report.json").read_text())
    assert report["acceptable"] and report["pairs"] == 2 and report["candidate"]["variant"] == "fp8"
    assert report["cost"]["candidate"]["transformer_weights_mb"] > 0  # from ListDeployments
    assert 0 < report["divergence"][-1]["x0_rel_l2"]["mean"] < 1 == report["gate_config"]["max_x0_divergence"]
    for name in ("report.md", "divergence.png", "scores.png"):
        assert (tmp_path / "ok" / name).stat().st_size > 0
    assert "not acceptable" in (tmp_path / "bad" / "report.md").read_text()
