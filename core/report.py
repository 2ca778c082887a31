"""The run report: the contract that users, scripts and later pipelines rely on.

``report.json`` in every run directory holds::

    baseline, compressed: {accuracy, size_bytes, params, macs, latency_ms: {p50, p90, batch}, ...}
    ratios: {size, latency, params, macs}        # baseline / compressed, > 1 is better
    accuracy_drop: float                          # points (percentage points), baseline - compressed
    stages: [{name, technique, metrics, ...}]
    artifacts: {onnx, model, ...}                 # paths relative to the run directory
    target: {name, ..., provider, nodes_total, nodes_on_target, validation: {max_abs_diff, top1_agreement}}
    mlflow_run_id: str | null
    config: {...}                                 # the resolved config
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ModelMetrics:
    """What slimkit measures of one model."""

    accuracy: float | None
    size_bytes: int
    params: int
    macs: int
    latency_ms: dict[str, float] = field(default_factory=dict)
    nonzero_params: int | None = None
    size_zip_bytes: int | None = None
    latencies: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def flat(self, prefix: str) -> dict[str, float]:
        """Numeric metrics flattened for trackers: ``{prefix}_accuracy``, ``{prefix}_latency_p50_ms``..."""
        out: dict[str, float] = {}
        for key in ("accuracy", "size_bytes", "params", "macs", "nonzero_params", "size_zip_bytes"):
            value = getattr(self, key)
            if value is not None:
                out[f"{prefix}_{key}"] = float(value)
        for lat in self.latencies:
            tag = f"{prefix}_latency_{lat['runtime']}_b{lat['batch']}"
            out[f"{tag}_p50_ms"] = float(lat["p50"])
            out[f"{tag}_p90_ms"] = float(lat["p90"])
            for key in ("peak_rss_mb", "gpu_mem_mb"):
                if lat.get(key) is not None:
                    out[f"{tag}_{key}"] = float(lat[key])
        if self.latency_ms:
            out[f"{prefix}_latency_p50_ms"] = float(self.latency_ms["p50"])
            out[f"{prefix}_latency_p90_ms"] = float(self.latency_ms["p90"])
        for key, value in self.extra.items():
            if isinstance(value, int | float):
                out[f"{prefix}_{key}"] = float(value)
        return out


@dataclass
class StageResult:
    """The outcome of one stage."""

    name: str
    technique: str
    index: int
    cached: bool
    seconds: float
    fingerprint: str
    model_path: str
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return float(a) / float(b)


@dataclass
class Report:
    """Baseline vs compressed, per stage, with artifacts; serialised as ``report.json``."""

    baseline: ModelMetrics | None = None
    compressed: ModelMetrics | None = None
    stages: list[StageResult] = field(default_factory=list)
    artifacts: dict[str, str] = field(default_factory=dict)
    target: dict[str, Any] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    status: str = "RUNNING"
    error: str | None = None
    fidelity: dict[str, Any] = field(default_factory=dict)
    run_dir: str = ""
    #: Top-level keys a plugin adds to ``report.json`` (``search`` and ``pareto`` for a search run).
    sections: dict[str, Any] = field(default_factory=dict)
    #: Markdown a plugin appends to ``report.md``, by section name, in insertion order.
    markdown: dict[str, str] = field(default_factory=dict)

    @property
    def ratios(self) -> dict[str, float | None]:
        """Baseline divided by compressed: above 1 means smaller or faster."""
        b, c = self.baseline, self.compressed
        if b is None or c is None:
            return {}
        return {
            "size": _ratio(b.size_bytes, c.size_bytes),
            "latency": _ratio(b.latency_ms.get("p50"), c.latency_ms.get("p50")),
            "params": _ratio(b.params, c.params),
            "macs": _ratio(b.macs, c.macs),
            "nonzero_params": _ratio(b.nonzero_params, c.nonzero_params),
            "size_zip": _ratio(b.size_zip_bytes, c.size_zip_bytes),
        }

    @property
    def accuracy_drop(self) -> float | None:
        """Baseline accuracy minus compressed accuracy, in percentage points."""
        b, c = self.baseline, self.compressed
        if b is None or c is None or b.accuracy is None or c.accuracy is None:
            return None
        return round((b.accuracy - c.accuracy) * 100.0, 6)

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "error": self.error,
            "baseline": self.baseline.to_dict() if self.baseline else None,
            "compressed": self.compressed.to_dict() if self.compressed else None,
            "ratios": self.ratios,
            "accuracy_drop": self.accuracy_drop,
            "fidelity": self.fidelity,
            "stages": [s.to_dict() for s in self.stages],
            "artifacts": self.artifacts,
            "target": self.target,
            "mlflow_run_id": self.mlflow_run_id,
            "config": self.config,
            **self.sections,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False, default=str)

    def rows(self) -> list[tuple[str, str, str, str]]:
        """(metric, baseline, compressed, ratio) rows for tables (terminal and markdown)."""
        b, c = self.baseline, self.compressed
        if b is None or c is None:
            return []
        r = self.ratios

        def fmt_ratio(x: float | None) -> str:
            return "-" if x is None else f"{x:.2f}x"

        def acc(m: ModelMetrics) -> str:
            return "-" if m.accuracy is None else f"{m.accuracy * 100:.2f} %"

        rows = [
            ("accuracy", acc(b), acc(c), "-" if self.accuracy_drop is None else f"{-self.accuracy_drop:+.2f} pt"),
            ("size (ONNX file)", _kb(b.size_bytes), _kb(c.size_bytes), fmt_ratio(r["size"])),
        ]
        if b.size_zip_bytes and c.size_zip_bytes:
            rows.append(("size (zipped)", _kb(b.size_zip_bytes), _kb(c.size_zip_bytes), fmt_ratio(r["size_zip"])))
        rows.append(("params", f"{b.params:,}", f"{c.params:,}", fmt_ratio(r["params"])))
        if b.nonzero_params is not None and c.nonzero_params is not None:
            rows.append(
                ("non-zero params", f"{b.nonzero_params:,}", f"{c.nonzero_params:,}", fmt_ratio(r["nonzero_params"]))
            )
        rows.append(("MACs", f"{b.macs:,}", f"{c.macs:,}", fmt_ratio(r["macs"])))
        cl = {(x["runtime"], x["batch"]): x for x in c.latencies}
        for lat in b.latencies:
            other = cl.get((lat["runtime"], lat["batch"]))
            if other is None:
                continue
            for q in ("p50", "p90"):
                rows.append(
                    (
                        f"latency {lat['runtime']} b{lat['batch']} {q}",
                        f"{lat[q]:.3f} ms",
                        f"{other[q]:.3f} ms",
                        fmt_ratio(_ratio(lat[q], other[q])),
                    )
                )
        return rows

    def to_markdown(self) -> str:
        lines = ["# slimkit report", "", f"status: **{self.status}**", ""]
        if self.error:
            lines += [f"error: `{self.error}`", ""]
        rows = self.rows()
        if rows:
            lines += ["| metric | baseline | compressed | ratio |", "|---|---|---|---|"]
            lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
            lines.append("")
        if self.fidelity:
            lines += ["## Fidelity to the baseline", ""]
            lines += [f"- {k}: {v:.6g}" for k, v in self.fidelity.items() if isinstance(v, int | float)]
            for i, per in enumerate(self.fidelity.get("per_output") or []):
                lines.append(f"- output {i}: " + ", ".join(f"{k} {v:.6g}" for k, v in per.items()))
            lines.append("")
        if "provider" in self.target:
            t = self.target
            lines += ["## On the target", ""]
            lines.append(
                f"- {t.get('name')}: {t.get('nodes_on_target')} of {t.get('nodes_total')} nodes on {t['provider']}"
                + (" (emulated)" if t.get("emulated") else "")
            )
            lines += [f"- validation {k}: {v:.6g}" for k, v in (t.get("validation") or {}).items()]
            lines.append("")
        if self.stages:
            lines += [
                "## Stages",
                "",
                "| # | stage | technique | cached | seconds | metrics |",
                "|---|---|---|---|---|---|",
            ]
            for s in self.stages:
                m = ", ".join(f"{k}={v:.4g}" for k, v in s.metrics.items())
                lines.append(f"| {s.index} | {s.name} | {s.technique} | {s.cached} | {s.seconds:.1f} | {m} |")
            lines.append("")
        if self.artifacts:
            lines += ["## Artifacts", ""] + [f"- {k}: `{v}`" for k, v in self.artifacts.items()] + [""]
        for text in self.markdown.values():
            lines += [text.rstrip("\n"), ""]
        if self.mlflow_run_id:
            lines += [f"MLflow run: `{self.mlflow_run_id}`", ""]
        return "\n".join(lines)


def _kb(n: int) -> str:
    return f"{n / 1024:.1f} KiB"
