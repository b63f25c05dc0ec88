import pytest
from pydantic import ValidationError

from latentguard.server.config import Settings


def test_no_config_serves_the_builtin_deployments():
    s = Settings.load()
    assert [d.name for d in s.deployments] == ["tiny-sd3", "tiny-flux", "tiny-sd3-fp8", "tiny-sd3-int4"]
    assert [d.baseline for d in s.deployments] == [None, None, "tiny-sd3", "tiny-sd3"]
    assert (s.port, s.metrics_port) == (50051, 9464)


def test_yaml_file_then_environment_overrides(tmp_path, monkeypatch):
    cfg = tmp_path / "lg.yaml"
    cfg.write_text(
        "port: 6000\n"
        "limits: {max_steps: 40}\n"
        "deployments:\n"
        "  - {name: fox, model: tiny-sd3, family: sd3, steps: 8, max_queue: 2,\n"
        "     policies: {spectral_residual: {action: abort, on_error: fail_closed}}}\n"
    )
    monkeypatch.setenv("LATENTGUARD_PORT", "6001")
    monkeypatch.setenv("LATENTGUARD_LIMITS__MAX_STEPS", "30")
    s = Settings.load(cfg)
    assert s.port == 6001 and s.limits.max_steps == 30
    (dep,) = s.deployments
    assert (dep.name, dep.steps, dep.max_queue) == ("fox", 8, 2)
    assert dep.policies["spectral_residual"].action == "abort"
    assert Settings.load(cfg, port=7000, host=None).port == 7000  # command-line flags win over everything


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("deployments: [{name: a, model: tiny-sd3, family: sd3, policies: {nope: {}}}]", "unknown detector"),
        ("deployments: [{name: a, model: tiny-sd3, family: sd4}]", "family"),
        (
            "deployments: [{name: a, model: tiny-sd3, family: sd3},\n"
            "              {name: a, model: tiny-flux, family: flux}]",
            "unique",
        ),
        ("colour: blue", "colour"),
        ("deployments: [{name: a, model: tiny-sd3, family: sd3, baseline: b}]", "'b' must name another"),
        ("deployments: [{name: a, model: tiny-sd3, family: sd3, baseline: a}]", "'a' must name another"),
        (
            "deployments: [{name: a, model: tiny-sd3, family: sd3, true_cfg_scale: 3}]",
            "true_cfg_scale is FLUX",
        ),
        (
            "deployments: [{name: a, model: tiny-flux, family: flux, true_cfg_scale: 0.5}]",
            "greater than or equal",
        ),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path, text, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(ValidationError, match=message):
        Settings.load(cfg)
