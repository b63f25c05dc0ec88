import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from latentguard.server.cli import app

runner = CliRunner()


def test_generate_local_writes_image_and_report(tmp_path):
    out, rep = tmp_path / "fox.png", tmp_path / "report.json"
    result = runner.invoke(
        app,
        [
            "generate",
            "--local",
            "--deployment",
            "tiny-sd3",
            "--prompt",
            "a red circle on a blue background",
            "--seed",
            "7",
            "--out",
            str(out),
            "--report",
            str(rep),
        ],
    )
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (256, 256)
    report = json.loads(rep.read_text())
    assert report["verdict"] == "pass" and report["seed"] == 7
    assert {d["name"] for d in report["detectors"]} >= {"spectral_residual", "non_finite"}
    assert len(report["steps"]) == report["steps_run"] == 12


def test_generate_with_drill_reports_the_flag(tmp_path):
    rep = tmp_path / "r.json"
    result = runner.invoke(
        app,
        [
            "generate",
            "--local",
            "--deployment",
            "tiny-flux",
            "--prompt",
            "a fox",
            "--drill",
            "aliasing:step=4,strength=0.5",
            "--report",
            str(rep),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(rep.read_text())
    assert report["verdict"] == "flag" and report["drill"].startswith("aliasing:step=4")


def test_bad_input_exits_2_with_the_message(tmp_path):
    result = runner.invoke(app, ["generate", "--local", "--prompt", "a fox", "--drill", "aliasing:step=x"])
    assert result.exit_code == 2 and "must be a number" in result.output
    result = runner.invoke(app, ["generate", "--local", "--prompt", "a fox", "--deployment", "nope"])
    assert result.exit_code == 2 and "unknown deployment 'nope'" in result.output


# train-classifier (about 80 s: drilled runs and the classifier's training too) in `make test-slow`
@pytest.mark.parametrize("command", ["calibrate", pytest.param("train-classifier", marks=pytest.mark.slow)])
def test_calibration_writes_a_profile_that_loads(tmp_path, command):
    from latentguard.detectors import DETECTORS, CalibrationProfile
    from latentguard.server.offline.trajectories import default_prompts

    prompts = tmp_path / "p.txt"
    prompts.write_text(
        "# twelve calibration prompts\n" + "\n".join(default_prompts("calibration")[:12]) + "\n"
    )
    out = tmp_path / "prof.json"
    args = [command, "--deployment", "tiny-flux", "--prompts", str(prompts), "--seeds", "12"]
    result = runner.invoke(app, [*args, "--fpr", "0.2", "--out", str(out), "--batch-size", "12"])
    assert result.exit_code == 0, result.output
    profile = CalibrationProfile.load(out)
    report = profile.report
    assert (report.fit_prompts, report.calibration_prompts, report.calibration_runs) == (4, 8, 96)
    assert report.calibration_union_fpr <= report.union_budget <= 0.2
    expected = set(DETECTORS) | ({"onnx_classifier"} if command == "train-classifier" else set())
    assert set(profile.build()) == expected
    assert (tmp_path / "prof.onnx_classifier.onnx").is_file() == (command == "train-classifier")


def test_generate_against_a_running_server(tmp_path):
    from latentguard.server.config import Settings
    from latentguard.server.harness.background import BackgroundServer

    srv = BackgroundServer(Settings(host="127.0.0.1", port=0, metrics_port=0)).start()
    try:
        out, rep = tmp_path / "fox.png", tmp_path / "r.json"
        result = runner.invoke(
            app,
            [
                "generate",
                "--target",
                srv.target,
                "--deployment",
                "tiny-flux",
                "--prompt",
                "a red circle on a blue background",
                "--drill",
                "nan:step=2",
                "--report",
                str(rep),
                "--out",
                str(out),
            ],
        )
        assert result.exit_code == 0, result.output
        report = json.loads(rep.read_text())
        assert report["verdict"] == "abort" and report["steps_run"] == 3 and not out.exists()
        assert "verdict abort" in result.output
        result = runner.invoke(
            app, ["generate", "--target", srv.target, "--deployment", "nope", "--prompt", "x"]
        )
        assert result.exit_code == 2 and "NOT_FOUND" in result.output
    finally:
        srv.stop()
