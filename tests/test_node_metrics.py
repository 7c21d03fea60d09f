"""``NodeMetrics``: private registry, counters, label hygiene, scrape-time gauges."""

from __future__ import annotations

import math
import sys

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from dicom_node.node_metrics import (
    MAX_LABEL_LENGTH,
    OTHER,
    NodeMetrics,
    cuda_memory_allocated,
    label_value,
    skip_reason_category,
)


def samples(m: NodeMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse the rendered text (what Prometheus sees) into {(sample name, labels): value}."""
    out = {}
    for family in text_string_to_metric_families(m.render().decode("utf-8")):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_counters_and_histogram_match_what_was_recorded() -> None:
    m = NodeMetrics(queue_depth=lambda: 7, gpu_memory=lambda: 1234.0)
    for _ in range(3):
        m.received()
    m.skipped("modality")
    m.skipped("modality")
    m.skipped("view_position")
    m.analysed(0.2)
    m.analysed(3.0)
    m.delivered("ORTHANC")
    m.failed("deliver")
    s = samples(m)
    assert s[("cxr_node_received_total", ())] == 3
    assert s[("cxr_node_skipped_total", (("reason", "modality"),))] == 2
    assert s[("cxr_node_skipped_total", (("reason", "view_position"),))] == 1
    assert s[("cxr_node_analysed_total", ())] == 2
    assert s[("cxr_node_delivered_total", (("destination", "ORTHANC"),))] == 1
    assert s[("cxr_node_failed_total", (("stage", "deliver"),))] == 1
    assert s[("cxr_node_inference_latency_seconds_count", ())] == 2
    assert s[("cxr_node_inference_latency_seconds_sum", ())] == pytest.approx(3.2)
    assert s[("cxr_node_inference_latency_seconds_bucket", (("le", "0.25"),))] == 1
    assert s[("cxr_node_inference_latency_seconds_bucket", (("le", "+Inf"),))] == 2
    assert s[("cxr_node_queue_depth", ())] == 7
    assert s[("cxr_node_gpu_memory_bytes", ())] == 1234


def test_registry_is_private() -> None:
    a, b = NodeMetrics(), NodeMetrics()  # two instances must not clash on names
    a.received()
    assert samples(a)[("cxr_node_received_total", ())] == 1
    assert samples(b)[("cxr_node_received_total", ())] == 0
    assert REGISTRY.get_sample_value("cxr_node_received_total") is None


def test_queue_depth_is_read_at_scrape_time_and_source_errors_do_not_break_scrapes() -> None:
    depth = [0]
    m = NodeMetrics(queue_depth=lambda: depth[0])
    assert samples(m)[("cxr_node_queue_depth", ())] == 0
    depth[0] = 5
    assert samples(m)[("cxr_node_queue_depth", ())] == 5

    def broken() -> float:
        raise RuntimeError("journal closed")

    m.set_queue_depth_source(broken)
    assert math.isnan(samples(m)[("cxr_node_queue_depth", ())])
    m.set_queue_depth_source(None)
    assert samples(m)[("cxr_node_queue_depth", ())] == 0
    with pytest.raises(ValueError, match="callable"):
        m.set_queue_depth_source(42)  # type: ignore[arg-type]


def test_undelivered_is_read_at_scrape_time() -> None:
    count = [3]
    m = NodeMetrics()
    assert samples(m)[("cxr_node_undelivered", ())] == 0
    m.set_undelivered_source(lambda: count[0])
    assert samples(m)[("cxr_node_undelivered", ())] == 3
    count[0] = 0
    assert samples(m)[("cxr_node_undelivered", ())] == 0
    with pytest.raises(ValueError, match="callable"):
        m.set_undelivered_source(7)  # type: ignore[arg-type]


def test_label_values_are_sanitised_and_capped() -> None:
    m = NodeMetrics(max_label_values=3)
    m.skipped('Modality "MR" / weird\nvalue')
    for reason in ("a", "b", "c", "d"):
        m.skipped(reason)
    s = samples(m)
    reasons = {dict(k[1])["reason"] for k in s if k[0] == "cxr_node_skipped_total"}
    assert reasons == {"Modality_MR_/_weird_value", "a", "b", OTHER}
    assert s[("cxr_node_skipped_total", (("reason", OTHER),))] == 2
    assert label_value("x" * 200) == "x" * MAX_LABEL_LENGTH
    assert label_value("  ") == "unknown"
    with pytest.raises(ValueError, match="max_label_values"):
        NodeMetrics(max_label_values=0)


@pytest.mark.parametrize(
    ("reason", "category"),
    [
        ("structured report (1.2.840.10008.5.1.4.1.1.88.33)", "structured_report"),
        ("created by this node (Manufacturer cxr-ai-node)", "own_result"),
        ("SOP class 1.2.3 is not routed for analysis", "sop_class"),
        ("Modality MR is not routed for analysis", "modality"),
        ("BodyPartExamined KNEE is not routed for analysis", "body_part"),
        ("BodyPartExamined is empty", "body_part"),
        ("ViewPosition LL is not a routed (frontal) view", "view_position"),
        ("something new", OTHER),
        (None, OTHER),
    ],
)
def test_skip_reason_category(reason: str | None, category: str) -> None:
    assert skip_reason_category(reason) == category


def test_negative_or_nan_latency_is_recorded_as_zero() -> None:
    m = NodeMetrics()
    m.analysed(-1.0)
    m.analysed(float("nan"))
    s = samples(m)
    assert s[("cxr_node_analysed_total", ())] == 2
    assert s[("cxr_node_inference_latency_seconds_sum", ())] == 0


def test_model_info() -> None:
    m = NodeMetrics()
    m.models_loaded([("cxr_classification", "0.2.0"), ("cxr_opacity_detection", "0.1.0")])
    s = samples(m)
    assert s[("cxr_node_model_info", (("name", "cxr_classification"), ("version", "0.2.0")))] == 1
    m.models_loaded([("cxr_classification", "0.3.0")])
    names = {k for k in samples(m) if k[0] == "cxr_node_model_info"}
    assert names == {("cxr_node_model_info", (("name", "cxr_classification"), ("version", "0.3.0")))}


def test_gpu_memory_is_zero_while_torch_is_not_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert cuda_memory_allocated() == 0.0


def test_gpu_memory_with_torch_loaded() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        assert cuda_memory_allocated() == 0.0
        assert samples(NodeMetrics())[("cxr_node_gpu_memory_bytes", ())] == 0
        return
    x = torch.ones(1024, 1024, device="cuda")  # pragma: no cover - only on a machine with a GPU
    try:
        assert samples(NodeMetrics())[("cxr_node_gpu_memory_bytes", ())] >= x.numel() * 4
    finally:
        del x
