import typing

import pytest
import yaml
from pydantic import BaseModel
from typer.testing import CliRunner

from latentguard.server.cli import app
from latentguard.server.config import ConfigError, Settings, StrictModel


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
    with pytest.raises(ConfigError, match=message):
        Settings.load(cfg)


DEP = "name: a, model: tiny-sd3, family: sd3"
HASH = "0" * 64
# one misspelt key in every config section: (yaml, the key's path, the suggestion, the section's class)
MISSPELT = [
    ("metric_port: 1", "metric_port", "metrics_port", "Settings"),
    ("limits: {max_step: 5}", "limits.max_step", "max_steps", "Limits"),
    (
        f"deployments: [{{{DEP}, gudance_scale: 3}}]",
        "deployments[0].gudance_scale",
        "guidance_scale",
        "DeploymentConfig",
    ),
    (
        f"deployments: [{{{DEP}, policies: {{grain: {{acton: abort}}}}}}]",
        "deployments[0].policies.grain.acton",
        "action",
        "PolicyConfig",
    ),
    (
        f"deployments: [{{{DEP}, adapters: [{{name: x, path: p, scael: 1}}]}}]",
        "deployments[0].adapters[0].scael",
        "scale",
        "AdapterConfig",
    ),
    (
        f"deployments: [{{{DEP}, attention: {{max_token: 8}}}}]",
        "deployments[0].attention.max_token",
        "max_tokens",
        "AttentionConfig",
    ),
    (
        f"deployments: [{{{DEP}, compile: {{mdoe: full}}}}]",
        "deployments[0].compile.mdoe",
        "mode",
        "CompileConfig",
    ),
    (
        f"deployments: [{{{DEP}, drift: {{permutation: 100}}}}]",
        "deployments[0].drift.permutation",
        "permutations",
        "DriftConfig",
    ),
    (
        f"deployments: [{{{DEP}, canaries: {{tolerence: 0.1}}}}]",
        "deployments[0].canaries.tolerence",
        "tolerance",
        "CanaryConfig",
    ),
    (
        f"deployments: [{{{DEP}, canaries: {{prompts: [{{prompt: x, sead: 1}}]}}}}]",
        "deployments[0].canaries.prompts[0].sead",
        "seed",
        "CanaryPrompt",
    ),
    (
        "shadow: [{baseline: a, candidate: b, fractoin: 0.1}]",
        "shadow[0].fractoin",
        "fraction",
        "ShadowConfig",
    ),
    ("tls: {cert: c, key: k, client-ca: ca}", "tls.client-ca", "client_ca", "TlsConfig"),
    ("auth: {token_file: t.yaml}", "auth.token_file", "tokens_file", "AuthConfig"),
    (
        f"auth: {{tokens: [{{name: n, sha256: '{HASH}', deployment: [a], inspect: true}}]}}",
        "auth.tokens[0].deployment",
        "deployments",
        "TokenConfig",
    ),
    (
        f"deployments: [{{{DEP}, evidence: {{store: 'file:///e', store_prompt: true}}}}]",
        "deployments[0].evidence.store_prompt",
        "store_prompts",
        "EvidenceConfig",
    ),
    (
        f"deployments: [{{{DEP}, live_calibration: {{held_out: 100}}}}]",
        "deployments[0].live_calibration.held_out",
        "held_out_runs",
        "LiveCalibrationConfig",
    ),
    (
        "tracing: {otlp_endpoint: 'http://c:4318/v1/traces', sample_rate: 0.5}",
        "tracing.sample_rate",
        "sample_ratio",
        "TracingConfig",
    ),
    (
        "connections: {inspect_idle_second: 3}",
        "connections.inspect_idle_second",
        "inspect_idle_seconds",
        "ConnectionLimits",
    ),
]


def config_sections(model: type[BaseModel] = Settings, seen: set[str] | None = None) -> set[str]:
    """Every model class reachable from Settings' fields (through lists, dicts and Optionals)."""
    seen = set() if seen is None else seen
    seen.add(model.__name__)
    for field in model.model_fields.values():
        stack = [field.annotation]
        while stack:
            tp = stack.pop()
            stack += typing.get_args(tp)
            if isinstance(tp, type) and issubclass(tp, BaseModel) and tp.__name__ not in seen:
                config_sections(tp, seen)
    return seen


def test_every_config_section_is_strict_and_tested():
    sections = config_sections()
    assert {row[3] for row in MISSPELT} == sections
    for field in Settings.model_fields.values():
        for tp in typing.get_args(field.annotation) or (field.annotation,):
            if isinstance(tp, type) and issubclass(tp, BaseModel):
                assert issubclass(tp, StrictModel), tp


@pytest.mark.parametrize(("text", "path", "suggestion", "section"), MISSPELT, ids=[m[3] for m in MISSPELT])
def test_a_misspelt_key_fails_with_its_path_and_the_closest_name(tmp_path, text, path, suggestion, section):
    cfg = tmp_path / "lg.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as info:
        Settings.load(cfg)
    assert f"{cfg}: {path}: unknown key (did you mean {suggestion!r}?)" in str(info.value).splitlines()


def test_a_token_without_deployments_is_refused(tmp_path):
    cfg = tmp_path / "lg.yaml"
    cfg.write_text(f"auth: {{tokens: [{{name: n, sha256: '{HASH}'}}]}}")
    with pytest.raises(ConfigError, match=r"auth.tokens\[0\].deployments: required"):
        Settings.load(cfg)
    cfg.write_text(f"auth: {{tokens: [{{name: n, sha256: '{HASH}', deployments: []}}]}}")
    with pytest.raises(ConfigError, match=r"auth.tokens\[0\].deployments: List should have at least 1"):
        Settings.load(cfg)


runner = CliRunner()


def test_a_tokens_file_entry_is_validated_and_named_by_serve_and_check(tmp_path):
    tokens, cfg = tmp_path / "tokens.yaml", tmp_path / "lg.yaml"
    tokens.write_text(
        f"- {{name: ok, sha256: '{HASH}', deployments: ['*']}}\n"
        f"- {{name: typo, sha256: '{HASH}', deployment: [tiny-sd3]}}\n"
    )
    cfg.write_text(f"auth: {{tokens_file: {tokens}}}\nwarmup: false\nport: 0\nmetrics_port: 0\n")
    with pytest.raises(ConfigError) as info:
        Settings.load(cfg).auth.all_tokens()
    lines = str(info.value).splitlines()
    assert f"{tokens}: [1].deployment: unknown key (did you mean 'deployments'?)" in lines
    assert f"{tokens}: [1].deployments: required" in lines
    for command in (["serve", "--config", str(cfg)], ["config", "check", str(cfg)]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2 and "[1].deployment: unknown key" in result.output, command
    tokens.write_text(f"- {{name: ok, sha256: '{HASH}', deployments: [tiny-sd3]}}\n")
    assert [t.deployments for t in Settings.load(cfg).auth.all_tokens()] == [["tiny-sd3"]]


def test_serve_refuses_a_misspelt_tls_field_with_exit_2(tmp_path):
    cfg = tmp_path / "lg.yaml"
    cfg.write_text("tls: {cert: c.pem, key: k.pem, client-ca: ca.pem}\n")
    result = runner.invoke(app, ["serve", "--config", str(cfg)])
    assert result.exit_code == 2
    assert "tls.client-ca: unknown key (did you mean 'client_ca'?)" in " ".join(result.output.split())


def test_config_check_prints_the_effective_settings_with_secrets_redacted(tmp_path):
    for name in ("c.pem", "k.pem"):
        (tmp_path / name).write_text("pem")
    tokens, cfg = tmp_path / "tokens.yaml", tmp_path / "lg.yaml"
    tokens.write_text(f"- {{name: from-file, sha256: '{'a' * 64}', deployments: [tiny-flux]}}\n")
    cfg.write_text(
        f"tls: {{cert: {tmp_path / 'c.pem'}, key: {tmp_path / 'k.pem'}}}\n"
        f"auth: {{tokens: [{{name: inline, sha256: '{HASH}', deployments: ['*']}}], tokens_file: {tokens}}}\n"
    )
    result = runner.invoke(app, ["config", "check", str(cfg)])
    assert result.exit_code == 0, result.output
    assert HASH not in result.output and "a" * 64 not in result.output
    printed = yaml.safe_load(result.stdout)
    assert printed["auth"]["tokens"] == [
        {"name": "inline", "sha256": "<redacted>", "deployments": ["*"], "inspect": False}
    ]
    assert printed["auth"]["tokens_file_entries"][0]["deployments"] == ["tiny-flux"]
    assert printed["tls"]["client_ca"] is None  # what the operator checks: mutual TLS is off here
    assert [d["name"] for d in printed["deployments"]][:2] == ["tiny-sd3", "tiny-flux"]
    (tmp_path / "k.pem").unlink()
    result = runner.invoke(app, ["config", "check", str(cfg)])
    assert result.exit_code == 2 and "tls.key: no such file" in result.output
