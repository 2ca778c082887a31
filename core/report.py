"""The run report: the contract that users, scripts and later pipelines rely on.

``report.json`` in every run directory holds::

    baseline, compressed: {accuracy, size_bytes, params, macs, latency_ms: {p50, p90, batch}, ...}
    ratios: {size, latency, params, macs}        # baseline / compressed, > 1 is better
    accuracy_drop: float                          # points (percentage points), baseline - compressed
    latency_noise: {threshold, noisy, pairs: [{runtime, batch, ratio, rounds, spread, noisy}]}
    notes: [{kind, message}]                      # noisy / no_effect / slower / bigger, one line each
    stages: [{name, technique, metrics, summary, ...}]
    artifacts: {onnx, model, ...}                 # paths relative to the run directory
    target: {name, ..., provider, nodes_total, nodes_on_target, validation: {max_abs_diff, top1_agreement}}
    mlflow_run_id: str | null
    config: {...}                                 # the resolved config
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .timing import NOISE_THRESHOLD, NOISY, ratio_noise

#: Below this speed ratio (baseline / compressed), with rounds that agree, the compressed model is "slower".
SLOWER = 0.95
#: A size or MACs ratio within this of 1.0 is "unchanged"; a size ratio below ``1 - SAME`` is "bigger".
SAME = 0.01

#: How a stage line shows a technique's headline metrics: key -> template, with ``{x}`` (a ratio, "3.98x"),
#: ``{pct}`` (a fraction in per cent), ``{n}`` (a count) or ``{g}`` (a number).
STAGE_METRICS: dict[str, str] = {
    "macs_ratio": "MACs {x} fewer",
    "mac_ratio": "MACs {x} fewer",
    "params_ratio": "params {x} fewer",
    "param_ratio": "params {x} fewer",
    "weight_params_ratio": "weight params {x} fewer",
    "packed_ratio": "packed file {x} smaller than float32",
    "sparsity": "sparsity {pct}",
    "blocks_removed": "{n} blocks removed",
    "factorized_layers": "{n} layers factorised",
    "layers_factorized": "{n} layers factorised",
    "layers_clustered": "{n} layers clustered",
    "swapped_layers": "{n} layers swapped",
    "quantized_layers": "{n} layers quantized",
    "float_layers": "{n} layers kept float",
    "speedup_vs_float": "{x} the float model's speed",
    "val_cosine": "val cosine to its input {g}",
    "teacher_agreement": "teacher agreement {pct}",
    "val_accuracy": "val accuracy {pct}",
}
#: Metrics measured part-way through a stage (before its own fine-tune): what each one means.
INTERMEDIATE: dict[str, str] = {
    "val_accuracy_pruned": "right after the last pruning step, before its fine-tune",
    "val_accuracy_init": "before this stage's fine-tune",
    "teacher_val_accuracy": "the teacher's",
}


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
            for key in ("p10", "mad"):
                if lat.get(key) is not None:
                    out[f"{tag}_{key}_ms"] = float(lat[key])
            for key in ("peak_rss_mb", "model_rss_mb", "gpu_mem_mb"):
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
        return {**asdict(self), "summary": self.summary()}

    def summary(self, later: list[str] | None = None) -> str:
        """The stage's metrics for people: its headline ones (:data:`STAGE_METRICS`) in words, the ones
        measured part-way (:data:`INTERMEDIATE`) with what they mean, others as ``key=value``. With
        ``later`` (the names of the stages after this one) and an accuracy, says it is not final."""
        parts: list[str] = []
        shown = set(STAGE_METRICS) | set(INTERMEDIATE) | _DETAIL
        for key, template in STAGE_METRICS.items():
            if key in self.metrics:
                parts.append(_fmt(template, self.metrics[key]))
        parts += [f"{k}={v:.4g}" for k, v in self.metrics.items() if k not in shown]
        text = ", ".join(dict.fromkeys(parts))
        mid = [f"{_fmt('{pct}', self.metrics[k])} {why}" for k, why in INTERMEDIATE.items() if k in self.metrics]
        if mid:
            text += f" ({'; '.join(mid)})"
        if later and any("accuracy" in k for k in self.metrics):
            verb = "follows" if len(later) == 1 else "follow"
            text += f"; not final: {', '.join(later)} {verb}, the table has the final numbers"
        return text


#: Stage metrics left off the stage line (still in ``report.json``, ``stage.json`` and the tracker).
_DETAIL = {
    "train_loss",
    "kmeans_seconds",
    "fp32_bytes",
    "size_bytes",
    "size_zip_bytes",
    "size_zip_bytes_before",
    "packed_bytes",
    "packed_zip_bytes",
    "packed_lzma_bytes",
    "packed_zstd_bytes",
    "mean_rel_error",
    "max_rel_error",
    "max_values_per_layer",
    "kd_divergence_before",
    "kd_divergence_after",
    "channels_kept",
    "heads_kept",
    "ffn_kept",
    "val_accuracy_drop",
    "latency_ms",
    "float_latency_ms",
    "budget_missed",
    "quantized_slowdown",
}


def _fmt(template: str, value: float) -> str:
    return template.format(x=f"{value:.2f}x", pct=f"{value * 100:.1f} %", n=f"{value:.0f}", g=f"{value:.4g}")


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

    def _pairs(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(baseline, compressed) latency dicts of each runtime and batch both were timed at."""
        b, c = self.baseline, self.compressed
        if b is None or c is None:
            return []
        cl = {(x["runtime"], x["batch"]): x for x in c.latencies}
        return [
            (lat, cl[(lat["runtime"], lat["batch"])]) for lat in b.latencies if (lat["runtime"], lat["batch"]) in cl
        ]

    @property
    def latency_noise(self) -> dict[str, Any]:
        """Whether each speed ratio can be trusted: ``{threshold, noisy, pairs: [...]}``.

        Per runtime and batch timed in interleaved rounds (``rounds_ms`` on both sides), the
        per-round ratios and :func:`~slimkit.core.timing.ratio_noise`'s verdict: ``noisy`` when
        ``(max - min) / median`` of the round ratios exceeds ``threshold``
        (:data:`~slimkit.core.timing.NOISE_THRESHOLD`). Empty pairs when no rounds were timed.
        """
        pairs = []
        for base, comp in self._pairs():
            noise = ratio_noise(base.get("rounds_ms") or [], comp.get("rounds_ms") or [])
            if noise is not None:
                pairs.append({"runtime": base["runtime"], "batch": base["batch"], **noise})
        return {"threshold": NOISE_THRESHOLD, "noisy": any(p["noisy"] for p in pairs), "pairs": pairs}

    def _noisy(self, runtime: str, batch: int) -> bool:
        return any(p["noisy"] for p in self.latency_noise["pairs"] if (p["runtime"], p["batch"]) == (runtime, batch))

    @property
    def notes(self) -> list[dict[str, str]]:
        """One line each where a ratio would mislead: ``{kind, message}``, kind ``noisy``, ``no_effect``,
        ``slower`` or ``bigger``; the last three name the setting that would change it when a stage
        says (its ``info["hint"]``)."""
        b, c = self.baseline, self.compressed
        if b is None or c is None:
            return []
        r = self.ratios
        out: list[dict[str, str]] = []
        noise = self.latency_noise
        noisy = [p for p in noise["pairs"] if p["noisy"]]
        if noisy:
            which = ", ".join(
                f"{p['runtime']} b{p['batch']} rounds {min(p['rounds']):.2f}x-{max(p['rounds']):.2f}x" for p in noisy
            )
            out.append(
                {
                    "kind": "noisy",
                    "message": f"latency ratios {NOISY} ({which}: spread above {noise['threshold']:.0%} of the ratio)",
                }
            )
        hints = [str(s.info["hint"]) for s in self.stages if isinstance(s.info, dict) and s.info.get("hint")]
        knob = f": {' '.join(hints)}" if hints else ""
        speed = {(x["runtime"], x["batch"]): _ratio(x["p50"], y["p50"]) for x, y in self._pairs()}
        clear = {k: v for k, v in speed.items() if v is not None and not self._noisy(*k)}
        if _same(r.get("size")) and _same(r.get("macs")) and not any(v > 1 + NOISE_THRESHOLD for v in clear.values()):
            out.append(
                {
                    "kind": "no_effect",
                    "message": f"no change the target can see: the ONNX it runs has the same size and MACs "
                    f"(1.00x), so any latency ratio is noise{knob}",
                }
            )
            return out
        slower = {k: v for k, v in clear.items() if v < SLOWER}
        if slower:
            which = ", ".join(f"{rt} b{bt} {v:.2f}x" for (rt, bt), v in slower.items())
            out.append({"kind": "slower", "message": f"the compressed model is slower on the target ({which}){knob}"})
        if r.get("size") is not None and r["size"] < 1.0 - SAME:
            out.append(
                {
                    "kind": "bigger",
                    "message": f"the compressed ONNX file is bigger ({_kb(c.size_bytes)} vs {_kb(b.size_bytes)}){knob}",
                }
            )
        return out

    def noise_metrics(self) -> dict[str, float]:
        """For trackers: ``latency_noisy`` (1/0), ``latency_ratio_spread`` (the largest) and per pair
        ``latency_<runtime>_b<batch>_ratio_spread``; empty when no rounds were timed."""
        noise = self.latency_noise
        if not noise["pairs"]:
            return {}
        out = {f"latency_{p['runtime']}_b{p['batch']}_ratio_spread": float(p["spread"]) for p in noise["pairs"]}
        out["latency_ratio_spread"] = max(float(p["spread"]) for p in noise["pairs"])
        out["latency_noisy"] = float(noise["noisy"])
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "error": self.error,
            "baseline": self.baseline.to_dict() if self.baseline else None,
            "compressed": self.compressed.to_dict() if self.compressed else None,
            "ratios": self.ratios,
            "accuracy_drop": self.accuracy_drop,
            "latency_noise": self.latency_noise,
            "notes": self.notes,
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
        kinds = {n["kind"] for n in self.notes}
        if "no_effect" in kinds:
            rows = [(m, x, y, f"{z} (unchanged)" if m in ("size (ONNX file)", "MACs") else z) for m, x, y, z in rows]
        elif "bigger" in kinds:
            rows = [(m, x, y, f"{z} bigger" if m == "size (ONNX file)" else z) for m, x, y, z in rows]
        for lat, other in self._pairs():
            where = f"latency {lat['runtime']} b{lat['batch']}"
            speed = _ratio(lat["p50"], other["p50"])
            text = fmt_ratio(speed)
            if self._noisy(lat["runtime"], lat["batch"]):
                text += f" {NOISY}"
            elif "no_effect" in kinds:
                text += " (same model: noise)"
            elif speed is not None and speed < SLOWER:
                text += " slower"
            if lat.get("p10") is not None and other.get("p10") is not None:  # the spread in the same row
                rows.append((f"{where} p50 [p10-p90]", _spread(lat), _spread(other), text))
                continue
            rows.append((f"{where} p50", f"{lat['p50']:.3f} ms", f"{other['p50']:.3f} ms", text))
            rows.append(
                (
                    f"{where} p90",
                    f"{lat['p90']:.3f} ms",
                    f"{other['p90']:.3f} ms",
                    fmt_ratio(_ratio(lat["p90"], other["p90"])),
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
        for note in self.notes:
            lines += [f"**{note['kind'].replace('_', ' ')}**: {note['message']}", ""]
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
            names = [s.name for s in self.stages]
            lines += [f"- {s.name}: {s.summary(names[i + 1 :])}" for i, s in enumerate(self.stages) if s.metrics]
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


def _same(ratio: float | None) -> bool:
    return ratio is not None and abs(ratio - 1.0) <= SAME


def _spread(lat: dict[str, Any]) -> str:
    return f"{lat['p50']:.3f} ms [{lat['p10']:.3f}-{lat['p90']:.3f}]"
