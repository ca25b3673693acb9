"""The exploration report (lifecycle stage 5): one self-contained HTML file about the offline store's
training examples and the registry's model versions. Plots are inline SVG (matplotlib); nothing is
fetched when the page is opened.

Sections: overview; label over time; missing values; drift between the training window and recent
data (the monitor's statistics, `shared.drift`); per input its distribution in both windows and its
relation to the label; the model versions with their metrics over time.
"""
from __future__ import annotations

import html
import io
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from shared.drift import compare_samples
from shared.modeling import quantile_edges
from shared.spec import PipelineSpec

TOP_CATEGORIES = 15
TRAIN_COLOR, RECENT_COLOR = "#3b6ea8", "#d9822b"


@dataclass
class Input:
    name: str
    kind: str  # numeric | category
    source: str  # feature | field


@dataclass
class Version:
    """A model version as the report needs it (from the models topic or the trainer's API)."""

    name: str
    version: int
    stage: str
    algorithm: str
    evaluation: str
    metrics: dict[str, float]
    trained_at: datetime
    data_start: datetime | None = None
    data_end: datetime | None = None


@dataclass
class Split:
    train: np.ndarray  # boolean masks over the rows
    recent: np.ndarray
    how: str


@dataclass
class ReportData:
    spec: PipelineSpec
    frame: pd.DataFrame  # training examples (or snapshots when there are none), in event-time order
    labelled: bool
    source: str
    counts: dict[str, int] = field(default_factory=dict)
    versions: list[Version] | None = None
    registry_note: str = ""


# ---------------------------------------------------------------- data

def inputs_of(spec: PipelineSpec, frame: pd.DataFrame) -> list[Input]:
    """The model inputs the report describes: every feature, and the event's numeric, bool and category
    fields (free text and timestamps are not model inputs)."""
    out = []
    for d in spec.features.definitions:
        if d.name in frame:
            kind = "numeric" if pd.api.types.is_numeric_dtype(frame[d.name]) and \
                not pd.api.types.is_bool_dtype(frame[d.name]) else "category"
            out.append(Input(d.name, kind, "feature"))
    for name, f in spec.event.fields.items():
        if name in frame and (spec.entity is None or name != spec.entity.key) and f.type in ("int", "float", "bool", "category"):
            out.append(Input(name, "numeric" if f.type in ("int", "float") else "category", "field"))
    return out


def column(frame: pd.DataFrame, item: Input) -> np.ndarray:
    """A numeric input as float64 (NaN missing); a category as object text (None missing)."""
    s = frame[item.name]
    if item.kind == "numeric":
        return pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    return np.asarray([None if v is None or (isinstance(v, float) and v != v) or v is pd.NA
                       else (("true" if v else "false") if isinstance(v, (bool, np.bool_)) else str(v))
                       for v in s.tolist()], dtype=object)


def targets(spec: PipelineSpec, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """What 'relation to the label' plots, as float series: binary, the positive rate; regression, the mean
    label; multiclass, each class's share."""
    y = frame[spec.label.name]
    if spec.label.type == "binary":
        positive = spec.label.classes[1] if spec.label.classes else "true"
        return {f"{spec.label.name} rate ({positive})": y.astype("float64").to_numpy()}
    if spec.label.type == "regression":
        return {f"mean {spec.label.name}": pd.to_numeric(y, errors="coerce").to_numpy(dtype=np.float64)}
    return {f"share {c}": (y.astype(str) == str(c)).to_numpy(dtype=np.float64) for c in spec.label.classes or ()}


def split(frame: pd.DataFrame, versions: list[Version] | None, recent_share: float,
          split_at: datetime | None) -> Split:
    """Training window against recent rows: before/after `split_at` if given; else the champion's training
    window (its lineage's event-time range) against what came after it, when both hold rows; else the
    oldest (1 - recent_share) of the rows against the newest recent_share."""
    t = frame["occurred_at"]
    if split_at is not None:
        train = (t < split_at).to_numpy()
        return Split(train, ~train, f"rows before {split_at.isoformat()} against the rows from then on")
    champion = next((v for v in sorted(versions or [], key=lambda v: v.trained_at, reverse=True)
                     if v.stage == "champion"), None)
    if champion is not None and champion.data_start is not None and champion.data_end is not None:
        train = ((t >= champion.data_start) & (t <= champion.data_end)).to_numpy()
        recent = (t > champion.data_end).to_numpy()
        if train.sum() >= 10 and recent.sum() >= 10:
            return Split(train, recent, f"the champion {champion.name} v{champion.version}'s training window "
                                        f"({champion.data_start:%Y-%m-%d %H:%M} – {champion.data_end:%Y-%m-%d %H:%M}, "
                                        f"from its lineage) against the rows after it")
    n = len(frame)
    cut = int(round(n * (1 - recent_share)))
    train = np.arange(n) < cut
    return Split(train, ~train, f"the oldest {1 - recent_share:.0%} of the rows by event time against the newest "
                                f"{recent_share:.0%}")


# ---------------------------------------------------------------- plots

def _figure(width: float = 9.0, height: float = 3.2, cols: int = 1) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, cols)
    return fig, axes


def svg(fig: Any) -> str:
    """The figure as an inline <svg> element (text kept as text, no XML prologue, unique ids)."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "loopline"}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    # matplotlib's RDF metadata names vocabularies by URL: not needed, and the page names no URL at all
    text = re.sub(r"\s*<metadata>.*?</metadata>", "", text, flags=re.S)
    text = re.sub(r'\s+xmlns:(dc|cc|rdf)="[^"]*"', "", text)
    # several SVGs in one page: matplotlib's ids (clip paths, glyphs) must not collide between them
    salt = f"f{next(_ids)}"
    text = re.sub(r'id="([^"]+)"', lambda m: f'id="{salt}-{m.group(1)}"', text)
    text = re.sub(r'url\(#([^)]+)\)', lambda m: f"url(#{salt}-{m.group(1)})", text)
    text = re.sub(r'href="#([^"]+)"', lambda m: f'href="#{salt}-{m.group(1)}"', text)
    return f'<div class="plot">{text}</div>'


_ids = iter(range(1, 1 << 30))


def plot_label_over_time(frame: pd.DataFrame, ys: dict[str, np.ndarray], split_at: datetime | None) -> str:
    t = frame["occurred_at"]
    n_buckets = int(min(40, max(1, len(frame) // 50)))
    buckets = pd.cut(t.astype("int64"), n_buckets, labels=False) if n_buckets > 1 else pd.Series(0, index=t.index)
    grouped = pd.DataFrame({"b": buckets, "t": t, **ys}).groupby("b")
    centers = grouped["t"].min() + (grouped["t"].max() - grouped["t"].min()) / 2
    fig, ax = _figure()
    counts = grouped.size()
    ax2 = ax.twinx()
    width = (centers.iloc[1] - centers.iloc[0]) * 0.8 if len(centers) > 1 else pd.Timedelta(hours=1)
    ax2.bar(centers, counts, width=width, color="#cccccc", alpha=0.5, label="examples")
    ax2.set_ylabel("examples")
    ax.set_zorder(ax2.get_zorder() + 1)
    ax.patch.set_visible(False)
    for name in ys:
        ax.plot(centers, grouped[name].mean(), marker="o", markersize=3, label=name)
    if split_at is not None:
        ax.axvline(split_at, color="#888888", linestyle="--", label="recent from here")
    ax.set_ylabel("label")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("label over time")
    fig.autofmt_xdate()
    return svg(fig)


def plot_bars(names: list[str], series: dict[str, list[float]], title: str, threshold: float | None = None,
              colors: tuple[str, ...] = (TRAIN_COLOR, RECENT_COLOR)) -> str:
    fig, ax = _figure(9.0, max(2.5, 0.28 * len(names) + 1))
    y = np.arange(len(names))
    height = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series.items()):
        ax.barh(y + i * height, values, height=height, label=label, color=colors[i % len(colors)])
    ax.set_yticks(y + height * (len(series) - 1) / 2, names, fontsize=8)
    ax.invert_yaxis()
    if threshold is not None:
        ax.axvline(threshold, color="#b03030", linestyle="--", label=f"alert threshold {threshold:g}")
    ax.legend(fontsize=8)
    ax.set_title(title)
    return svg(fig)


def plot_input(item: Input, values: np.ndarray, split_: Split, ys: dict[str, np.ndarray] | None) -> str:
    """Distribution in both windows (left) and the label by decile or category (right)."""
    fig, axes = _figure(10.0, 3.2, cols=2 if ys else 1)
    dist = axes[0] if ys else axes
    train, recent = values[split_.train], values[split_.recent]
    if item.kind == "numeric":
        present = values[~np.isnan(values)]
        if present.size:
            lo, hi = np.percentile(present, [1, 99])
            unique = np.unique(present)
            if unique.size <= 30:
                bins = np.append(unique, unique[-1] + 1) - 0.5 if np.all(unique == np.round(unique)) else unique.size
            else:
                bins = np.linspace(lo, hi, 31) if hi > lo else 10
            for sample, label, color in ((train, "training window", TRAIN_COLOR), (recent, "recent", RECENT_COLOR)):
                sample = sample[~np.isnan(sample)]
                if sample.size:
                    dist.hist(np.clip(sample, lo, hi) if unique.size > 30 else sample, bins=bins, density=True,
                              histtype="stepfilled", alpha=0.45, label=f"{label} ({sample.size})", color=color)
            dist.legend(fontsize=8)
        dist.set_title(f"{item.name}: distribution" + (" (1st–99th percentile)" if present.size and
                                                       np.unique(present).size > 30 else ""), fontsize=10)
    else:
        top = pd.Series(values[split_.train]).value_counts(dropna=True).index[:TOP_CATEGORIES].tolist()
        cats = top + ["(other)", "(missing)"]

        def shares(sample: np.ndarray) -> list[float]:
            s = pd.Series(sample, dtype=object)
            n = max(1, len(s))
            known = [float((s == c).sum()) / n for c in top]
            missing = float(s.isna().sum()) / n
            return known + [max(0.0, 1 - sum(known) - missing), missing]

        x = np.arange(len(cats))
        dist.bar(x - 0.2, shares(train), width=0.4, label=f"training window ({train.size})", color=TRAIN_COLOR)
        dist.bar(x + 0.2, shares(recent), width=0.4, label=f"recent ({recent.size})", color=RECENT_COLOR)
        dist.set_xticks(x, cats, rotation=45, ha="right", fontsize=8)
        dist.set_ylabel("share")
        dist.legend(fontsize=8)
        dist.set_title(f"{item.name}: distribution", fontsize=10)
    if ys:
        rel = axes[1]
        positions, labels, groups = relation_groups(item, values)
        for name, y in ys.items():
            means = [float(np.nanmean(y[g])) if g.any() else np.nan for g in groups]
            rel.plot(positions, means, marker="o", markersize=4, label=name)
        overall = {name: float(np.nanmean(y)) for name, y in ys.items()}
        for name, value in overall.items():
            rel.axhline(value, color="#999999", linestyle=":", linewidth=1)
        rel.set_xticks(positions, labels, rotation=45, ha="right", fontsize=7)
        rel.set_title(f"label by {'decile' if item.kind == 'numeric' else 'value'} of {item.name}", fontsize=10)
        rel.legend(fontsize=8)
    return svg(fig)


def relation_groups(item: Input, values: np.ndarray) -> tuple[list[int], list[str], list[np.ndarray]]:
    """The groups 'label by feature' compares: numeric deciles (of all rows) plus missing, or the most
    frequent categories plus missing."""
    groups, labels = [], []
    if item.kind == "numeric":
        present = ~np.isnan(values)
        edges = quantile_edges(values[present])
        for i in range(len(edges) - 1):
            lo, hi = edges[i], edges[i + 1]
            last = i == len(edges) - 2
            groups.append(present & (values >= lo) & ((values <= hi) if last else (values < hi)))
            labels.append(f"{lo:.3g}–{hi:.3g}")
        if len(edges) == 2 and edges[0] == edges[1]:
            groups, labels = [present], [f"{edges[0]:.3g}"]
        missing = ~present
    else:
        s = pd.Series(values, dtype=object)
        for c in s.value_counts(dropna=True).index[:TOP_CATEGORIES]:
            groups.append((s == c).to_numpy())
            labels.append(str(c))
        missing = s.isna().to_numpy()
    if missing.any():
        groups.append(missing)
        labels.append("(missing)")
    return list(range(len(groups))), labels, groups


def plot_versions(versions: list[Version], metric: str) -> str:
    fig, ax = _figure()
    for name in sorted({v.name for v in versions}):
        mine = sorted((v for v in versions if v.name == name and metric in v.metrics), key=lambda v: v.trained_at)
        if not mine:
            continue
        line = ax.plot([v.trained_at for v in mine], [v.metrics[metric] for v in mine], marker="o", markersize=4,
                       label=name)[0]
        champions = [v for v in mine if v.stage == "champion"]
        if champions:
            ax.scatter([v.trained_at for v in champions], [v.metrics[metric] for v in champions], s=90,
                       facecolors="none", edgecolors=line.get_color(), linewidths=2)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} of each version by training time (circled: champion)")
    ax.legend(fontsize=8)
    fig.autofmt_xdate()
    return svg(fig)


# ---------------------------------------------------------------- the page

def _e(value: Any) -> str:
    return html.escape(str(value))


def _num(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    return f"{value:.{digits}g}" if isinstance(value, float) else _e(value)


def _table(head: list[str], rows: list[list[str]], cls: str = "", row_classes: list[str] | None = None) -> str:
    """Cells are HTML already (escape data with _e)."""
    out = [f'<table class="{cls}"><thead><tr>' + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        attr = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        out.append(f"<tr{attr}>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>")
    return "".join(out) + "</tbody></table>"


def drift_rows(spec: PipelineSpec, items: list[Input], columns: dict[str, np.ndarray], split_: Split
               ) -> list[dict[str, Any]]:
    """The monitor's statistics per input between the two windows, and whether the spec's data-drift rule
    would alert on them (`monitoring.data_drift`: psi above the threshold, or the type's p-value below it)."""
    drift = spec.monitoring.data_drift
    out = []
    for item in items:
        values = columns[item.name]
        stats = compare_samples(values[split_.train], values[split_.recent], item.kind)
        watched = "psi" if drift.method == "psi" else ("ks_pvalue" if item.kind == "numeric" else "chi2_pvalue")
        value = stats[watched]
        alert = value > drift.limit if watched == "psi" else value < drift.limit
        out.append({"input": item.name, "kind": item.kind, **stats, "watched": watched, "alert": alert})
    return out


CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0 auto;max-width:1100px;padding:1em 2em;
color:#222;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
h3{margin-bottom:.3em}
table{border-collapse:collapse;margin:.5em 0;font-size:.85em}th,td{border:1px solid #ddd;padding:.25em .6em;
text-align:left}th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.alert td{background:#fbeaea}.note{color:#666;font-size:.9em}.plot svg{max-width:100%;height:auto}
nav ul{columns:3;font-size:.9em}section.input{margin-bottom:1.5em}
"""


def render(data: ReportData, *, recent_share: float = 0.2, split_at: datetime | None = None,
           generated_at: datetime | None = None) -> str:
    """The whole HTML page."""
    spec, frame = data.spec, data.frame
    title = f"Loopline exploration: {spec.name}"
    parts: list[str] = []
    toc: list[tuple[str, str]] = []

    def section(anchor: str, heading: str, body: str) -> None:
        toc.append((anchor, heading))
        parts.append(f'<section id="{anchor}"><h2>{_e(heading)}</h2>{body}</section>')

    items = inputs_of(spec, frame)
    columns = {i.name: column(frame, i) for i in items}
    enough = len(frame) >= 20
    split_ = split(frame, data.versions, recent_share, split_at) if enough else None
    ys = targets(spec, frame) if data.labelled and enough else None

    # overview
    rows = [["offline store", _e(data.source)],
            ["rows read", ", ".join(f"{_e(k)}: {v:,}" for k, v in data.counts.items())],
            ["described", "training examples (snapshots joined with their labels)" if data.labelled
             else "feature snapshots (no training examples yet: the label sections are left out)"]]
    if len(frame):
        rows.append(["event time", f"{_e(frame['occurred_at'].min())} – {_e(frame['occurred_at'].max())}"])
    if ys:
        rows += [[_e(name), _num(float(np.nanmean(y)))] for name, y in ys.items()]
    rows.append(["inputs", f"{sum(i.source == 'feature' for i in items)} features, "
                           f"{sum(i.source == 'field' for i in items)} event fields"])
    if split_ is not None:
        rows.append(["windows", f"{_e(split_.how)}: {int(split_.train.sum()):,} rows in the training window, "
                                f"{int(split_.recent.sum()):,} recent"])
    section("overview", "Overview", _table(["", ""], rows))
    if not enough:
        parts.append(f'<p class="note">Only {len(frame)} rows: at least 20 are needed for the plots.</p>')
    else:
        assert split_ is not None
        recent_start = frame["occurred_at"][split_.recent].min() if split_.recent.any() else None
        if ys:
            section("label-over-time", "Label over time",
                    plot_label_over_time(frame, ys, None if pd.isna(recent_start) else recent_start))

        # missing values
        miss = [(i.name, [float(pd.isna(pd.Series(columns[i.name][m], dtype=object)).mean()) if m.any() else 0.0
                          for m in (np.ones(len(frame), bool), split_.train, split_.recent)]) for i in items]
        table = _table(["input", "missing (all)", "training window", "recent"],
                       [[_e(n), *(f'{v:.2%}' for v in vals)] for n, vals in miss], "missing")
        section("missing", "Missing values",
                plot_bars([n for n, _ in miss], {"training window": [v[1][1] for v in miss],
                                                  "recent": [v[1][2] for v in miss]}, "share missing") + table)

        # drift
        drows = drift_rows(spec, items, columns, split_)
        dspec = spec.monitoring.data_drift
        body = (f'<p class="note">The monitor\'s statistics (shared/drift.py): numbers binned into the training '
                f"window's deciles plus a missing bin, categories into its values plus other and missing; PSI over "
                f"every bin, Kolmogorov–Smirnov (numbers) or chi-square (categories). The spec alerts on "
                f"<b>{_e(dspec.method)}</b> "
                f"{'above' if dspec.method == 'psi' else 'p-value below'} {dspec.limit:g}; rows that would alert "
                f"are marked.</p>")
        body += plot_bars([r["input"] for r in drows], {"PSI": [r["psi"] for r in drows]},
                          "PSI, training window → recent", dspec.limit if dspec.method == "psi" else None,
                          colors=(RECENT_COLOR,))
        table_rows = []
        for r in drows:
            test, stat, p = ("KS", r["ks"], r["ks_pvalue"]) if r["kind"] == "numeric" else \
                ("chi-square", r["chi2"], r["chi2_pvalue"])
            table_rows.append([_e(r["input"]), _e(r["kind"]), _num(r["psi"]), _e(test), _num(stat), _num(p),
                               "alert" if r["alert"] else ""])
        table = _table(["input", "kind", "PSI", "test", "statistic", "p-value", "spec rule"], table_rows, "drift",
                       ["alert" if r["alert"] else "" for r in drows])
        section("drift", "Drift: training window against recent", body + table)

        # per input
        body = ""
        for item in items:
            body += (f'<section class="input" id="input-{_e(item.name)}"><h3>{_e(item.name)} '
                     f'<span class="note">({item.kind} {item.source})</span></h3>'
                     f"{plot_input(item, columns[item.name], split_, ys)}</section>")
        section("inputs", "Inputs: distribution and relation to the label" if ys else "Inputs: distribution", body)

    # models
    if data.versions:
        primary = spec.metrics.primary
        rows = [[_e(v.name), str(v.version), _e(v.stage), _e(v.algorithm), _e(v.evaluation),
                 _e(f"{v.trained_at:%Y-%m-%d %H:%M:%S}"),
                 ", ".join(f"{_e(k)} {_num(val)}" for k, val in sorted(v.metrics.items(), key=lambda kv: (
                     kv[0] != primary, kv[0])))]
                for v in sorted(data.versions, key=lambda v: (v.trained_at, v.name, v.version))]
        body = plot_versions(data.versions, primary) + _table(
            ["model", "version", "stage", "algorithm", "evaluation", "trained", "metrics"], rows, "versions")
        if data.registry_note:
            body = f'<p class="note">{_e(data.registry_note)}</p>' + body
        section("models", "Model versions", body)
    else:
        section("models", "Model versions", f'<p class="note">{_e(data.registry_note or "No model versions.")}</p>')

    stamp = (generated_at or datetime.now().astimezone()).strftime("%Y-%m-%d %H:%M:%S %Z")
    nav = "<nav><ul>" + "".join(f'<li><a href="#{a}">{_e(h)}</a></li>' for a, h in toc) + "</ul></nav>"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<style>{CSS}</style></head><body><h1>{_e(title)}</h1>"
            f'<p class="note">Generated {_e(stamp)} by <code>loopline explore</code>.</p>{nav}'
            + "".join(parts) + "</body></html>\n")
