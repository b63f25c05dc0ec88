"""Evidence bundles, the `evidence` CLI and its HTML page, exemplars and traces (server/evidence/,
server/core/evidence.py, server/core/tracing.py)."""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import subprocess
import urllib.request

import pytest
import torch
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from PIL import Image
from typer.testing import CliRunner

from latentguard.server.cli import app
from latentguard.server.config import EvidenceConfig, Settings, builtin_deployments
from latentguard.server.core.evidence import EvidenceRecorder
from latentguard.server.core.tracing import Tracing
from latentguard.server.evidence.bundle import PromptRecord, Snapshot, Snapshots, bundle_files
from latentguard.server.evidence.store import EvidenceStore
from latentguard.server.metrics import Metrics
from latentguard.server.report import Report
from latentguard.server.rpc.client import channel
from latentguard.v1 import guardrail_pb2 as pb
from latentguard.v1 import guardrail_pb2_grpc as pb_grpc
from tests.server.grpc_harness import ServerThread, samples, scrape

PROMPT = "a lighthouse on a cliff at dusk"
DRILL = "aliasing:step=3,strength=0.5"


def evidence_settings(store: str, **evidence) -> Settings:
    sd3 = builtin_deployments()[0]
    cfg = EvidenceConfig(store=store, **evidence)
    return Settings(
        deployments=[sd3.model_copy(update={"evidence": cfg})],
        host="127.0.0.1",
        port=0,
        metrics_port=0,
        warmup=False,
    )


@pytest.fixture(scope="module")
def traced_server(tmp_path_factory):
    """tiny-sd3 keeping evidence in a folder, traced into an in-memory exporter."""
    root = tmp_path_factory.mktemp("evidence")
    server = ServerThread(evidence_settings(f"file://{root}", sample_passing=0.0))
    spans = InMemorySpanExporter()
    server.server.service.tracing = Tracing(None, SimpleSpanProcessor(spans))
    server.start()
    stub = pb_grpc.GuardrailStub(channel(server.target))
    drilled = stub.Generate(
        pb.GenerateRequest(deployment="tiny-sd3", prompt=PROMPT, drill=DRILL, steps=6), timeout=120
    )
    benign = stub.Generate(
        pb.GenerateRequest(deployment="tiny-sd3", prompt=PROMPT, steps=6, seed=3), timeout=120
    )
    server.server.service.evidence.flush()
    yield server, root, spans, drilled, benign
    server.stop()


def run_cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_a_drilled_request_leaves_a_bundle_the_cli_lists_and_renders(traced_server, tmp_path):
    """The acceptance check: bundle (>= 1 JSON, >= 2 PNG), `evidence ls` lists it, `show --html` writes
    the page."""
    _, root, _, drilled, benign = traced_server
    rid = drilled.report.request_id
    assert drilled.report.verdict == "flag" and len(rid) == 32
    folders = [p for p in root.iterdir() if p.is_dir()]
    assert [f.name.split("_")[1] for f in folders] == [rid]  # the passing request is not kept (sample 0)
    files = {p.name for p in folders[0].iterdir()}
    assert {"meta.json", "report.json", "image.png", "x0_flagged.png", "x0_last.png"} <= files
    meta = json.loads((folders[0] / "meta.json").read_text())
    assert meta["verdict"] == "flag" and meta["request_id"] == rid
    assert set(meta["flagged"]) == {d.name for d in drilled.report.detectors if d.flagged}
    assert meta["flagged_step"] == min(d.first_step for d in drilled.report.detectors if d.flagged)
    assert meta["last_step"] == 5 and meta["weights"] and meta["profile"] == drilled.report.profile
    assert Report.from_dict(json.loads((folders[0] / "report.json").read_text())).steps_run == 6
    with Image.open(folders[0] / "x0_flagged.png") as picture:
        assert min(picture.size) >= 256
    assert benign.report.request_id and benign.report.request_id != rid

    listed = run_cli("evidence", "ls", "--store", f"file://{root}", "--json")
    assert [json.loads(line)["request_id"] for line in listed.splitlines()] == [rid]
    assert rid in run_cli("evidence", "ls", "--store", f"file://{root}", "--detector", meta["flagged"][0])
    assert rid not in run_cli("evidence", "ls", "--store", f"file://{root}", "--verdict", "abort")
    page = tmp_path / "page.html"
    shown = run_cli("evidence", "show", rid[:8], "--store", f"file://{root}", "--html", str(page))
    assert rid in shown and meta["flagged"][0] in shown
    text = page.read_text()
    assert text.count("data:image/png;base64,") == 3 and "<svg" in text and rid in text
    run_cli("evidence", "export", rid, "--store", f"file://{root}", "--out", str(tmp_path / "out"))
    assert {"index.html", "report.json", "image.png", "meta.json"} <= {
        p.name for p in (tmp_path / "out").iterdir()
    }


def test_an_unknown_bundle_id_is_a_clear_error(traced_server):
    _, root, *_ = traced_server
    result = CliRunner().invoke(app, ["evidence", "show", "ffffffffffff", "--store", f"file://{root}"])
    assert result.exit_code == 2 and "no bundle with id 'ffffffffffff'" in result.output


def test_the_prompt_is_kept_only_as_a_keyed_hash(traced_server):
    _, root, *_ = traced_server
    for path in root.rglob("*"):
        if path.is_file():
            assert PROMPT.encode() not in path.read_bytes(), path
    meta = json.loads(next(root.rglob("meta.json")).read_text())
    assert len(meta["prompt_hmac"]) == 64 and "prompt" not in meta


def exemplars_of(text: str) -> dict[tuple[str, str], str]:
    """(series name, its labels) -> exemplar labels, from an OpenMetrics exposition. (prometheus_client's
    own OpenMetrics parser refuses histograms with negative buckets, whose _sum the spec leaves out.)"""
    out = {}
    for line in text.splitlines():
        series, sep, exemplar = line.partition(" # ")
        if sep and not line.startswith("#"):
            name, _, labels = series.partition("{")
            out[(name, "{" + labels.rsplit("}", 1)[0] + "}")] = exemplar.split("}")[0] + "}"
    return out


def test_openmetrics_scrape_carries_the_request_id_as_an_exemplar(traced_server):
    server, _, _, drilled, _ = traced_server
    url = f"http://127.0.0.1:{server.server.metrics_port}/metrics"
    request = urllib.request.Request(url, headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    with urllib.request.urlopen(request, timeout=5) as r:
        text = r.read().decode()
    assert text.rstrip().endswith("# EOF")
    exemplars = exemplars_of(text)
    flagged = next(d.name for d in drilled.report.detectors if d.flagged)
    series = f'{{deployment="tiny-sd3",detector="{flagged}",family="sd3",variant="fp32"}}'
    ids = f'{{request_id="{drilled.report.request_id}",trace_id="{drilled.report.trace_id}"}}'
    assert exemplars[("latentguard_artifacts_total", series)] == ids
    ok = '{deployment="tiny-sd3",family="sd3",outcome="ok",variant="fp32"}'
    assert exemplars[("latentguard_requests_total", ok)].startswith('{request_id="')
    # the classic text format (what promtool checks) carries no exemplars and stays as it was
    classic = scrape(server)
    assert " # {" not in classic
    written = ("latentguard_evidence_writes_total", (("deployment", "tiny-sd3"), ("outcome", "written")))
    assert samples(classic)[written] == 1


def test_each_request_is_one_span_with_an_event_where_a_detector_first_flagged(traced_server):
    _, root, spans, drilled, benign = traced_server
    finished = {s.attributes["latentguard.request_id"]: s for s in spans.get_finished_spans()}
    span = finished[drilled.report.request_id]
    assert format(span.context.trace_id, "032x") == drilled.report.trace_id
    assert span.attributes["latentguard.verdict"] == "flag"
    first = {d.name: d.first_step for d in drilled.report.detectors if d.flagged}
    events = [(e.attributes["step"], tuple(e.attributes["detectors"])) for e in span.events]
    assert sorted(name for _, names in events for name in names) == sorted(first)
    assert all(first[name] == step for step, names in events for name in names)
    assert not finished[benign.report.request_id].events
    meta = json.loads(next(root.rglob("meta.json")).read_text())
    assert meta["trace_id"] == drilled.report.trace_id


def _report(verdict: str = "flag", request_id: str = "0" * 32) -> Report:
    return Report(verdict, "tiny-sd3", "sd3", "fp32", 1, 4, 4, -1, "", [], [], request_id=request_id)  # type: ignore[arg-type]


def _metrics() -> Metrics:
    from prometheus_client import CollectorRegistry

    from latentguard.server.core.service import deployment_labels

    return Metrics(CollectorRegistry(), deployment_labels(Settings(deployments=builtin_deployments()[:1])))


def _writes(metrics: Metrics, outcome: str) -> float:
    return metrics.evidence_writes.labels("tiny-sd3", outcome)._value.get()


def test_the_oldest_bundles_are_evicted_beyond_the_bounds(tmp_path):
    metrics = _metrics()
    recorder = EvidenceRecorder(metrics)
    recorder.watch("tiny-sd3", EvidenceConfig(store=f"file://{tmp_path}", max_bundles=3), "w")
    snaps = Snapshots(None, Snapshot(3, torch.randn(16, 32, 32)))
    ids = [f"{i:032x}" for i in range(5)]
    for rid in ids:
        recorder.submit(_report(request_id=rid), None, snaps, "p", "generate")
        recorder.flush()
    assert [b.id for b in EvidenceStore(f"file://{tmp_path}").list()] == ids[2:]
    assert _writes(metrics, "written") == 5
    # by bytes: a restart lists what is there, and a 1-byte budget keeps only the newest bundle
    recorder = EvidenceRecorder(metrics)
    recorder.watch("tiny-sd3", EvidenceConfig(store=f"file://{tmp_path}", max_megabytes=1e-6), "w")
    recorder.submit(_report(request_id="f" * 32), None, snaps, "p", "generate")
    recorder.flush()
    assert [b.id for b in EvidenceStore(f"file://{tmp_path}").list()] == ["f" * 32]


def test_a_failing_store_is_counted_and_never_fails_the_request(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store's folder should be")
    server = ServerThread(evidence_settings(f"file://{blocker}/evidence")).start()
    try:
        stub = pb_grpc.GuardrailStub(channel(server.target))
        response = stub.Generate(
            pb.GenerateRequest(deployment="tiny-sd3", prompt="a fox", drill=DRILL, steps=6), timeout=120
        )
        assert response.report.verdict == "flag" and response.image_png
        server.server.service.evidence.flush()
        text = scrape(server)
        key = ("latentguard_evidence_writes_total", (("deployment", "tiny-sd3"), ("outcome", "error")))
        assert samples(text)[key] == 1
        assert (
            samples(text)[
                (
                    "latentguard_requests_total",
                    (
                        ("deployment", "tiny-sd3"),
                        ("family", "sd3"),
                        ("outcome", "flagged"),
                        ("variant", "fp32"),
                    ),
                )
            ]
            == 1
        )
    finally:
        server.stop()


def test_a_full_writer_queue_drops_and_counts(tmp_path, monkeypatch):
    metrics = _metrics()
    recorder = EvidenceRecorder(metrics)
    recorder.watch("tiny-sd3", EvidenceConfig(store=f"file://{tmp_path}", max_pending=1), "w")
    gate = __import__("threading").Event()
    recorder.executor.submit(gate.wait)  # the writer is busy
    recorder.submit(_report(request_id="a" * 32), None, None, None, "inspect")
    recorder.submit(_report(request_id="b" * 32), None, None, None, "inspect")
    gate.set()
    recorder.flush()
    assert (_writes(metrics, "written"), _writes(metrics, "dropped")) == (1, 1)


def test_prompts_are_stored_only_when_opted_in_and_the_hash_is_keyed(tmp_path):
    key = b"k" * 32
    _, files = bundle_files(
        _report(),
        image=None,
        snapshots=None,
        prompt=PROMPT,
        prompts=PromptRecord(key),
        weights="w",
        source="generate",
    )
    meta = json.loads(files["meta.json"])
    assert meta["prompt_hmac"] == hmac.new(key, PROMPT.encode(), hashlib.sha256).hexdigest()
    assert "prompt" not in meta and all(PROMPT.encode() not in v for v in files.values())
    other = PromptRecord(b"j" * 32).fields(PROMPT)["prompt_hmac"]
    assert other != meta["prompt_hmac"]  # a different key, a different hash: not a plain digest
    _, files = bundle_files(
        _report(),
        image=None,
        snapshots=None,
        prompt=PROMPT,
        prompts=PromptRecord(key, True),
        weights="w",
        source="generate",
    )
    assert json.loads(files["meta.json"])["prompt"] == PROMPT


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server on loopback: a real S3 endpoint that the store reaches over HTTP."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def test_bundles_go_to_s3_and_the_cli_reads_them_back(s3_server, tmp_path, monkeypatch):
    import boto3

    for k, v in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(k, v)
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="evidence")
    options = {"endpoint_url": s3_server}
    metrics = _metrics()
    recorder = EvidenceRecorder(metrics)
    recorder.watch(
        "tiny-sd3",
        EvidenceConfig(store="s3://evidence/replica-0", storage_options=options, max_bundles=2),
        "w",
    )
    snaps = Snapshots(Snapshot(1, torch.randn(16, 32, 32)), Snapshot(3, torch.randn(16, 32, 32)))
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    for i in range(3):
        recorder.submit(_report(request_id=f"{i:032x}"), image, snaps, PROMPT, "generate")
        recorder.flush()
    assert _writes(metrics, "written") == 3 and _writes(metrics, "error") == 0
    keys = [
        o["Key"]
        for o in boto3.client("s3", endpoint_url=s3_server).list_objects_v2(Bucket="evidence")["Contents"]
    ]
    assert len({k.split("/")[1] for k in keys}) == 2 and all(k.startswith("replica-0/") for k in keys)
    option = f"endpoint_url={s3_server}"
    listed = run_cli(
        "evidence", "ls", "--store", "s3://evidence/replica-0", "--storage-option", option, "--json"
    )
    assert [json.loads(line)["request_id"] for line in listed.splitlines()] == [f"{2:032x}", f"{1:032x}"]
    out = tmp_path / "bundle"
    run_cli(
        "evidence",
        "export",
        f"{2:032x}",
        "--store",
        "s3://evidence/replica-0",
        "--storage-option",
        option,
        "--out",
        str(out),
    )
    assert (out / "x0_flagged.png").stat().st_size > 0 and (out / "index.html").is_file()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_the_page_renders_in_a_real_browser(traced_server, tmp_path):
    """Headless Chromium loads the page: the pictures decode (naturalWidth > 0) and a screenshot has
    the picture and the plots in it."""
    assert CHROMIUM, "chromium is not installed (make test installs it: apt-get install chromium)"
    _, root, _, drilled, _ = traced_server
    page = tmp_path / "page.html"
    run_cli("evidence", "show", drilled.report.request_id, "--store", f"file://{root}", "--html", str(page))
    probe = tmp_path / "probe.html"  # the page, plus a script that writes what the browser decoded
    probe.write_text(page.read_text().replace("</body>", PROBE_SCRIPT + "</body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"]
    dom = subprocess.run(
        [CHROMIUM, *flags, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert 'data-decoded="3"' in dom and 'data-svgs="1"' in dom, dom[-500:]
    shot = tmp_path / "shot.png"
    subprocess.run(
        [CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1200,1800", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    with Image.open(shot) as picture:
        pixels = torch.tensor(list(picture.convert("L").getdata()), dtype=torch.float32)
    assert picture.size == (1200, 1800) and pixels.std() > 20  # not a blank page


PROBE_SCRIPT = """<script>
window.addEventListener("load", () => {
  const decoded = [...document.images].filter((i) => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.decoded = decoded;
  document.body.dataset.svgs = document.querySelectorAll("svg").length;
});
</script>"""
