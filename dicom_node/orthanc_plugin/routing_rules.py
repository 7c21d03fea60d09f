"""Which Orthanc instances the routing plug-in forwards to the AI node (pure Python, stdlib only).

This module runs inside Orthanc's embedded interpreter (the system Python that the
``orthanc-python`` plug-in links against), so it must not import anything outside the
standard library. It is also imported by the unit tests as
``dicom_node.orthanc_plugin.routing_rules``.

The plug-in reads its settings from the ``"CxrAiNode"`` section of the Orthanc
configuration; :func:`PluginConfig.from_orthanc_configuration` validates that section.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

try:  # imported as dicom_node.orthanc_plugin.routing_rules (node, tests)
    from . import routing_policy as rp
except ImportError:  # inside Orthanc: the plug-in's folder is on sys.path
    import routing_policy as rp  # type: ignore[no-redef]

#: Name of the Orthanc configuration section read by the plug-in.
CONFIG_SECTION = "CxrAiNode"
#: Name of the Orthanc user metadata that marks an instance as delivered to the node.
FORWARDED_METADATA = "CxrAiForwarded"
#: Manufacturer written by the node into its own SR / SC (loop guard).
NODE_MANUFACTURER = rp.NODE_MANUFACTURER
#: Modalities that are never forwarded, whatever the configuration says (results, not images).
NEVER_FORWARDED_MODALITIES = rp.NEVER_ANALYSED_MODALITIES

_CODE_RE = re.compile(r"^[A-Z0-9 _]{0,16}$")

#: The plug-in's rules are the project's one routing policy (``routing_policy``, shared with the node).
RoutingRules = rp.RoutingPolicy
Decision = rp.Decision


def _code_set(name: str, value: Any, *, allow_empty_code: bool) -> frozenset[str]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{CONFIG_SECTION}.{name} must be a list of strings, got {value!r}")
    codes = frozenset(v.strip().upper() for v in value)
    for c in codes:
        if not _CODE_RE.match(c):
            raise ValueError(f"{CONFIG_SECTION}.{name} has an invalid DICOM code string {c!r}")
        if c == "" and not allow_empty_code:
            raise ValueError(f"{CONFIG_SECTION}.{name} may not contain the empty string, got {value!r}")
    return codes


@dataclass(frozen=True)
class PluginConfig:
    """The validated ``"CxrAiNode"`` section of the Orthanc configuration."""

    #: Symbolic name of the node in Orthanc's ``DicomModalities``.
    node_modality: str = "cxr-node"
    #: Forward every stable study automatically (else only on ``POST /cxr-ai/studies/{id}/analyze``).
    auto_forward: bool = True
    #: Orthanc job priority of the C-STORE jobs.
    job_priority: int = 0
    #: Retries of a study whose C-STORE job fails while the node answers C-ECHO (a problem with the
    #: study itself); after them the study is set aside (ERROR log line, status route). A node that
    #: does not answer never uses them up: forwarding waits for it, however long it is down.
    max_retries: int = 5
    #: First delay after a failed job or a failed C-ECHO probe of a down node; doubles up to ``max_retry_delay_s``.
    retry_delay_s: float = 10.0
    max_retry_delay_s: float = 300.0
    #: A study waiting longer than this for the node is reported (ERROR line, at most once per period).
    alert_after_s: float = 600.0
    #: How often the worker checks its pending jobs.
    poll_interval_s: float = 1.0
    #: Log every skipped instance at warning level (else at info level).
    verbose: bool = False
    rules: rp.RoutingPolicy = field(default_factory=rp.RoutingPolicy)

    def __post_init__(self) -> None:
        if not isinstance(self.node_modality, str) or not self.node_modality.strip():
            raise ValueError(f"{CONFIG_SECTION}.NodeModality must be a non-empty string, got {self.node_modality!r}")
        if not isinstance(self.auto_forward, bool):
            raise ValueError(f"{CONFIG_SECTION}.AutoForward must be true or false, got {self.auto_forward!r}")
        if not isinstance(self.verbose, bool):
            raise ValueError(f"{CONFIG_SECTION}.Verbose must be true or false, got {self.verbose!r}")
        if not isinstance(self.job_priority, int) or isinstance(self.job_priority, bool):
            raise ValueError(f"{CONFIG_SECTION}.JobPriority must be an integer, got {self.job_priority!r}")
        if not isinstance(self.max_retries, int) or isinstance(self.max_retries, bool) or self.max_retries < 0:
            raise ValueError(f"{CONFIG_SECTION}.MaxRetries must be an integer >= 0, got {self.max_retries!r}")
        for name, value in (("RetryDelaySeconds", self.retry_delay_s), ("PollIntervalSeconds", self.poll_interval_s),
                            ("MaxRetryDelaySeconds", self.max_retry_delay_s)):  # fmt: skip
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= 3600:
                raise ValueError(f"{CONFIG_SECTION}.{name} must be a number in (0, 3600], got {value!r}")
        if self.max_retry_delay_s < self.retry_delay_s:
            raise ValueError(f"{CONFIG_SECTION}.MaxRetryDelaySeconds ({self.max_retry_delay_s!r}) must be >= "
                             f"RetryDelaySeconds ({self.retry_delay_s!r})")  # fmt: skip
        a = self.alert_after_s
        if not isinstance(a, (int, float)) or isinstance(a, bool) or not 0 < a <= 7 * 86400:
            raise ValueError(f"{CONFIG_SECTION}.AlertAfterSeconds must be a number in (0, 604800], got {a!r}")

    @classmethod
    def from_section(cls, section: Mapping[str, Any] | None) -> PluginConfig:
        """Build from the ``"CxrAiNode"`` section (missing keys take the defaults; unknown keys are errors)."""
        section = dict(section or {})
        known = {
            "NodeModality", "AutoForward", "JobPriority", "MaxRetries", "RetryDelaySeconds",
            "MaxRetryDelaySeconds", "AlertAfterSeconds", "PollIntervalSeconds", "Verbose", "Modalities",
            "BodyParts", "SecondaryCaptureModalities", "SopClasses", "ViewPositions", "ExcludedManufacturers",
        }  # fmt: skip
        unknown = sorted(set(section) - known)
        if unknown:
            raise ValueError(f"unknown keys in the {CONFIG_SECTION} configuration section: {unknown}")
        d = rp.DEFAULT_POLICY
        body_parts = _code_set("BodyParts", section.get("BodyParts", [*sorted(d.body_parts), ""]), allow_empty_code=True)
        views = _code_set("ViewPositions", section.get("ViewPositions", [*sorted(d.view_positions), ""]),
                          allow_empty_code=True)  # fmt: skip
        sops = section.get("SopClasses", sorted(d.sop_classes))
        if not isinstance(sops, (list, tuple)) or not all(isinstance(v, str) for v in sops):
            raise ValueError(f"{CONFIG_SECTION}.SopClasses must be a list of UID strings, got {sops!r}")
        try:
            rules = rp.RoutingPolicy(
                modalities=_code_set("Modalities", section.get("Modalities", sorted(d.modalities)),
                                     allow_empty_code=False),
                secondary_capture_modalities=_code_set(
                    "SecondaryCaptureModalities",
                    section.get("SecondaryCaptureModalities", sorted(d.secondary_capture_modalities)),
                    allow_empty_code=False,
                ),
                sop_classes=frozenset(sops),
                body_parts=body_parts - {""},
                allow_empty_body_part="" in body_parts,
                view_positions=views - {""},
                allow_empty_view_position="" in views,
                excluded_manufacturers=_code_set_any(
                    "ExcludedManufacturers", section.get("ExcludedManufacturers", [NODE_MANUFACTURER])
                ),
            )  # fmt: skip
        except ValueError as exc:
            raise ValueError(f"{CONFIG_SECTION}: {exc}") from None
        defaults = cls()
        return cls(
            node_modality=section.get("NodeModality", defaults.node_modality),
            auto_forward=section.get("AutoForward", defaults.auto_forward),
            job_priority=section.get("JobPriority", defaults.job_priority),
            max_retries=section.get("MaxRetries", defaults.max_retries),
            retry_delay_s=section.get("RetryDelaySeconds", defaults.retry_delay_s),
            max_retry_delay_s=section.get("MaxRetryDelaySeconds", defaults.max_retry_delay_s),
            alert_after_s=section.get("AlertAfterSeconds", defaults.alert_after_s),
            poll_interval_s=section.get("PollIntervalSeconds", defaults.poll_interval_s),
            verbose=section.get("Verbose", defaults.verbose),
            rules=rules,
        )

    @classmethod
    def from_orthanc_configuration(cls, configuration: Mapping[str, Any]) -> PluginConfig:
        """Build from the whole Orthanc configuration (``json.loads(orthanc.GetConfiguration())``).

        Also checks that the node is declared in ``DicomModalities`` (else nothing could be sent).
        """
        cfg = cls.from_section(configuration.get(CONFIG_SECTION))
        modalities = configuration.get("DicomModalities") or {}
        if cfg.node_modality not in modalities:
            raise ValueError(
                f"{CONFIG_SECTION}.NodeModality {cfg.node_modality!r} is not declared in DicomModalities "
                f"(declared: {sorted(modalities)})"
            )
        return cfg


def _code_set_any(name: str, value: Any) -> frozenset[str]:
    """Like :func:`_code_set` for free-text values (Manufacturer is LO, not CS)."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"{CONFIG_SECTION}.{name} must be a list of non-empty strings, got {value!r}")
    return frozenset(v.strip().upper() for v in value)


@dataclass(frozen=True)
class Selection:
    """The instances of one study to forward, and the ones skipped with their reason."""

    forward: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]


def select_instances(
    instances: Iterable[tuple[str, Mapping[str, Any]]],
    rules: RoutingRules,
    *,
    already_forwarded: Iterable[str] = (),
) -> Selection:
    """Apply ``rules`` to ``(orthanc instance id, simplified tags)`` pairs.

    Instances in ``already_forwarded`` are skipped (reason ``"already forwarded"``); order is kept.
    """
    done = set(already_forwarded)
    forward: list[str] = []
    skipped: list[tuple[str, str]] = []
    for instance_id, tags in instances:
        if instance_id in done:
            skipped.append((instance_id, "already forwarded"))
            continue
        decision = rules.decide(tags)
        if decision.forward:
            forward.append(instance_id)
        else:
            skipped.append((instance_id, decision.reason))
    return Selection(tuple(forward), tuple(skipped))


def store_request(instance_ids: Iterable[str], config: PluginConfig) -> dict[str, Any]:
    """Body of ``POST /modalities/{node}/store`` for an asynchronous Orthanc job."""
    ids = list(instance_ids)
    if not ids:
        raise ValueError("store_request needs at least one instance id")
    return {"Resources": ids, "Synchronous": False, "Priority": config.job_priority}


def analyze_route_study_id(uri: str) -> str | None:
    """The Orthanc study id in ``/cxr-ai/studies/{id}/analyze`` (``None`` if ``uri`` is not that route)."""
    m = ANALYZE_ROUTE_RE.match(uri)
    return m.group(1) if m else None


#: Orthanc REST route served by the plug-in (regular expression as given to ``RegisterRestCallback``).
ANALYZE_ROUTE = "/cxr-ai/studies/([0-9a-f-]+)/analyze"
ANALYZE_ROUTE_RE = re.compile("^" + ANALYZE_ROUTE + "$")
#: Status route: configuration and counters of the plug-in.
STATUS_ROUTE = "/cxr-ai/status"
#: The status figures as Prometheus text (waiting studies, oldest wait, node reachable, counters).
METRICS_ROUTE = "/cxr-ai/metrics"

#: Label of the Orthanc Explorer button that sends the open study to the node.
EXPLORER_BUTTON_LABEL = "Analyze with cxr-ai-node"

#: JavaScript that Orthanc Explorer runs (``orthanc.ExtendOrthancExplorer``): a button on the study
#: page that POSTs to the analyze route (same origin, so the user's Orthanc login applies) and says
#: how many instances were sent. Orthanc Explorer is jQuery Mobile; pages live under ``/app/``.
EXPLORER_JS = """
$('#study').live('pagebeforecreate', function() {
  var b = $('<a>')
    .attr('data-role', 'button')
    .attr('href', '#')
    .attr('data-icon', 'forward')
    .attr('data-theme', 'e')
    .attr('id', 'cxr-ai-analyze')
    .text('%(label)s');
  b.insertBefore($('#study-delete').parent().parent());
  b.click(function(e) {
    e.preventDefault();
    if (!$.mobile.pageData) { return; }
    $.ajax({
      url: '../cxr-ai/studies/' + $.mobile.pageData.uuid + '/analyze',
      type: 'POST',
      dataType: 'json',
      success: function(s) {
        alert('cxr-ai-node: ' + s.Forwarded.length + ' image(s) sent for analysis, ' +
              s.Skipped.length + ' skipped (not frontal chest radiographs).');
      },
      error: function(x) { alert('cxr-ai-node: request failed (HTTP ' + x.status + ')'); }
    });
  });
});
""" % {"label": EXPLORER_BUTTON_LABEL}  # noqa: UP031 - the JavaScript is full of braces that str.format would need doubled
