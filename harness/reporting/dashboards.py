"""Feature dashboards: where one SAE feature fires most, its activation histogram, its logit effects, its accuracies.

Written as one self-contained HTML page (inline CSS, the histogram PNG embedded as base64) and one markdown page
(histogram PNG beside it) under reports/<profile>/features/feature-<idx>.{html,md}. The page only draws figures
computed elsewhere (harness.studies.feature_contexts, the claims); it recomputes nothing but the logit effects.

Logit effects: the decoder direction d = W_dec[f] / out_norm_factor (the residual the feature writes) is multiplied by
the final norm's scale g and the unembedding, d·g @ W_Uᵀ [vocabulary] (a LayerNorm model first removes d's mean, as its
norm does; its bias is the same for every direction). The norm's division is a positive per-token scalar, so it
rescales but does not reorder the effects and is left out; so is a final soft cap (monotone).
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import pathlib
from collections.abc import Mapping, Sequence

import jinja2
import numpy as np
from matplotlib.figure import Figure

from harness.errors import InputError
from harness.sae import sae as sae_lib
from harness.studies.feature_contexts import ORIGINS, PLAIN, Context, FeatureStudy, TokenSet

ORIGIN_COLOR = {"plain text": "#1f77b4", "MC prompt": "#ff7f0e", "MC answer": "#d62728"}
N_LOGITS = 12


@dataclasses.dataclass(frozen=True, kw_only=True)
class LogitEffects:
    """The tokens whose logits the feature's decoder direction raises / lowers most (text, effect)."""

    top: tuple[tuple[str, float], ...]
    bottom: tuple[tuple[str, float], ...]


def logit_effects(checkpoint, params: sae_lib.SAEParams, feature: int, *, n: int = N_LOGITS) -> LogitEffects:
    """Top / bottom n of (W_dec[f] / out_norm_factor)·g @ W_Uᵀ (see the module docstring)."""
    f = int(sae_lib.check_features(params, [feature])[0])
    g, W_U = checkpoint.unembedding()
    d = np.asarray(params.W_dec[f], np.float32) / params.out_norm_factor
    if d.shape != g.shape:
        raise InputError(f"SAE width {d.shape[0]} does not match the model's d_model {g.shape[0]}")
    if checkpoint.config.norm == "layer":  # LayerNorm removes a direction's mean before scaling (its bias is common)
        d = d - d.mean()
    effect = W_U @ (d * g)
    order = np.argsort(-effect, kind="stable")
    decode = checkpoint.tokenizer.decode
    return LogitEffects(top=tuple((decode([int(i)]), float(effect[i])) for i in order[:n]),
                        bottom=tuple((decode([int(i)]), float(effect[i])) for i in order[::-1][:n]))


def histogram_png(sets: Sequence[TokenSet], *, feature: int, reading: str) -> bytes:
    """PNG of the activation histogram per origin (non-zero values, log count; zeros counted in the legend)."""
    values = {o: [] for o in ORIGINS}
    for s in sets:
        for o in ORIGINS:
            if (o == PLAIN) == (s.name == PLAIN):
                values[o].append(s.values(o))
    fig = Figure(figsize=(6.5, 3.2))  # not pyplot: no global backend, nothing to close
    ax = fig.add_subplot()
    allv = np.concatenate([np.concatenate(v) for v in values.values() if v]) if any(values.values()) else np.zeros(1)
    nonzero = allv[allv != 0]
    bins = np.linspace(nonzero.min(), nonzero.max(), 41) if nonzero.size and nonzero.min() < nonzero.max() else 40
    for o, v in values.items():
        if not v:
            continue
        x = np.concatenate(v)
        nz = x[x != 0]
        ax.hist(nz, bins=bins, histtype="step", lw=1.4, color=ORIGIN_COLOR[o],
                label=f"{o}: {nz.size} non-zero of {x.size}")
    if nonzero.size:
        ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, "the feature is 0 at every position", ha="center", transform=ax.transAxes)
    ax.set(xlabel=f"feature {feature} activation ({reading})", ylabel="positions", title=f"Feature {feature}: activations")
    ax.legend(fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _shown(token: str) -> str:
    return token.replace("\n", "↵").replace("\t", "→")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Dashboard:
    """Everything a feature page shows; built by the caller from measured figures."""

    feature: int
    profile: str
    reading: str
    contexts: tuple[Context, ...]
    sets: tuple[TokenSet, ...]
    logits: LogitEffects | None = None
    accuracies: Mapping[str, str] = dataclasses.field(default_factory=dict)
    summary: Mapping[str, str] = dataclasses.field(default_factory=dict)


INDEX_NAME = "README.md"  # the features/ index page that write_index writes beside the dashboards

# One jinja2 template with autoescape: every text that comes from a tokenizer, a file or a claim is escaped.
_HTML = jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined).from_string("""\
<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Feature {{ d.feature }} — {{ d.profile }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 24px; max-width: 1150px; color: #222; }
table { border-collapse: collapse; margin: 8px 0 16px; }
td, th { border: 1px solid #ccc; padding: 3px 6px; vertical-align: top; font-size: 13px; text-align: left; }
.ctx { font-family: ui-monospace, monospace; white-space: pre-wrap; word-break: break-word; max-width: 760px; }
.tok { border-radius: 2px; }
.two { display: flex; gap: 24px; }
</style></head><body>
<nav><a href="{{ index }}">all feature dashboards</a> · <a href="{{ markdown }}">this page as markdown</a></nav>
<h1>Feature {{ d.feature }}</h1>
<p>Profile <b>{{ d.profile }}</b>; reading: <b>{{ d.reading }}</b>. Tokens are shaded by activation
(darkest = the largest shown, {{ "%.4g"|format(scale) }}); the peak token is outlined; hover for the value. ↵ marks a newline.</p>
<table>{% for k, v in d.summary.items() %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}</table>
<h2>Top {{ d.contexts|length }} activating contexts (one per sequence, pooled over all sources)</h2>
<table><tr><th>#</th><th>origin</th><th>where</th><th>max</th><th>context</th></tr>
{% for c in d.contexts %}
<tr><td>{{ loop.index }}</td><td style="color:{{ colors[c.origin] }}">{{ c.origin }}</td><td>{{ c.label }}</td><td>{{ "%.4g"|format(c.value) }}</td><td class="ctx">
{%- for t, a, style in spans(c) %}<span class="tok" style="{{ style }}" title="{{ "%.4g"|format(a) }}">{{ t }}</span>{% endfor -%}
</td></tr>
{% endfor %}
</table>
<h2>Activation histogram</h2>
<img alt="histogram of feature {{ d.feature }} activations" src="data:image/png;base64,{{ img }}">
<ul>{% for s in d.sets %}<li>{{ s.name }}: {{ s.n_counted }} positions counted of {{ s.n_positions }}. {{ s.note }}</li>{% endfor %}</ul>
{% if d.logits is not none %}
<h2>Logit effects of the decoder direction</h2><p>W_dec[f] × final RMSNorm scale × unembedding (the per-token RMS factor rescales but does not reorder).</p><div class="two">
{% for head, items in (("raised", d.logits.top), ("lowered", d.logits.bottom)) %}<table><tr><th>{{ head }}</th><th>effect</th></tr>{% for t, v in items %}<tr><td><code>{{ shown(t) }}</code></td><td>{{ "%+.3f"|format(v) }}</td></tr>{% endfor %}</table>{% endfor %}
</div>
{% endif %}
<h2>Accuracies from the claims</h2>
{% if d.accuracies %}<table>{% for k, v in d.accuracies.items() %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}</table>{% else %}<p>none recorded for this feature</p>{% endif %}
</body></html>
""")


def _spans(c: Context, scale: float):
    """(shown token text, activation, inline style) per token of one context."""
    out = []
    for i, (t, a) in enumerate(zip(c.tokens, c.acts)):
        alpha = 0.0 if scale <= 0 else max(0.0, min(1.0, a / scale))
        style = f"background: rgba(220, 40, 40, {alpha:.2f});" + (" outline: 2px solid #222;" if i == c.peak else "")
        out.append((_shown(t), a, style))
    return out


def render_html(d: Dashboard, histogram: bytes) -> str:
    """The self-contained HTML page (no external resources but its links to the index and its markdown twin)."""
    scale = max([c.value for c in d.contexts] + [0.0])
    return _HTML.render(d=d, scale=scale, colors=ORIGIN_COLOR, spans=lambda c: _spans(c, scale), shown=_shown,
                        img=base64.b64encode(histogram).decode("ascii"), index=INDEX_NAME,
                        markdown=f"feature-{d.feature}.md")


def _md_context(c: Context) -> str:
    parts = []
    for i, (t, a) in enumerate(zip(c.tokens, c.acts)):
        t = _shown(t).replace("|", "\\|").replace("`", "'").replace("*", "\\*").replace("_", "\\_")
        core = t.strip(" ")
        lead, tail = t[: len(t) - len(t.lstrip(" "))], t[len(t.rstrip(" ")):]  # markdown emphasis may not start with a space
        if not core:
            parts.append(t)
        elif i == c.peak:
            parts.append(f"{lead}**[{core}]**{tail}")
        else:
            parts.append(f"{lead}_{core}_{tail}" if a > 0 else t)
    return "".join(parts)


def render_markdown(d: Dashboard, histogram_name: str) -> str:
    """The markdown page: peak token in **[brackets]**, other active tokens in _italics_."""
    lines = [f"[all feature dashboards]({INDEX_NAME}) · [this page as HTML](feature-{d.feature}.html)", "",
             f"# Feature {d.feature} ({d.profile}, reading: {d.reading})", ""]
    lines += [f"- {k}: {v}" for k, v in d.summary.items()] + [""]
    lines += [f"## Top {len(d.contexts)} activating contexts", "", "| # | origin | where | max | context |", "|---|---|---|---|---|"]
    lines += [f"| {i + 1} | {c.origin} | {c.label} | {c.value:.4g} | {_md_context(c)} |" for i, c in enumerate(d.contexts)]
    lines += ["", f"![activation histogram]({histogram_name})", ""]
    lines += [f"- {s.name}: {s.n_counted} positions counted of {s.n_positions}. {s.note}" for s in d.sets]
    if d.logits is not None:
        lines += ["", "## Logit effects (W_dec[f] · final-norm scale · unembedding)", "", "| raised | effect | lowered | effect |",
                  "|---|---|---|---|"]
        lines += [f"| `{_shown(a)}` | {x:+.3f} | `{_shown(b)}` | {y:+.3f} |" for (a, x), (b, y) in zip(d.logits.top, d.logits.bottom)]
    lines += ["", "## Accuracies from the claims", ""]
    lines += [f"- {k}: {v}" for k, v in d.accuracies.items()] or ["none recorded for this feature"]
    return "\n".join(lines) + "\n"


def write_dashboard(d: Dashboard, directory) -> tuple[pathlib.Path, pathlib.Path]:
    """Write feature-<idx>.html, feature-<idx>.md and feature-<idx>-hist.png into `directory`; (html, md) paths.

    The pages link to the folder's README.md index: a plain one is written when none exists (see `write_index`).
    """
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    png = histogram_png(d.sets, feature=d.feature, reading=d.reading)
    stem = f"feature-{d.feature}"
    (directory / f"{stem}-hist.png").write_bytes(png)
    html_path, md_path = directory / f"{stem}.html", directory / f"{stem}.md"
    html_path.write_text(render_html(d, png), encoding="utf-8")
    md_path.write_text(render_markdown(d, f"{stem}-hist.png"), encoding="utf-8")
    if not (directory / INDEX_NAME).exists():  # the pages link to it; write_index replaces it with the reasons
        pages = sorted(directory.glob("feature-*.html"), key=lambda q: int(q.stem.split("-")[1]))
        (directory / INDEX_NAME).write_text(section(d.profile, [(int(q.stem.split("-")[1]), "dashboard", q) for q in pages],
                                                    directory), encoding="utf-8")
    return html_path, md_path


def accuracies_from_claims(claims_json, feature: int) -> dict[str, str]:
    """{claim id: measured figure} of the recorded claims whose details name this feature (a missing file gives {})."""
    path = pathlib.Path(claims_json)
    if not path.exists():
        return {}
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(report, dict) or report.get("schema_version") != 2:
        return {}  # a report of an older schema names no figures this page can trust
    out = {}
    for e in report.get("results", []):
        details = e.get("details") or {}
        if details.get("feature") == feature:
            ci = e.get("ci")
            ci_text = f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else ""
            out[e["claim"]] = f"{e['value']:.4g}{ci_text} (n={e.get('n')}; {e.get('verdict')})"
    return out


def _link(path: pathlib.Path, start: pathlib.Path) -> str:
    """`path` relative to the folder `start` (the folder of the page that holds the link), in POSIX form."""
    return pathlib.Path(os.path.relpath(pathlib.Path(path).resolve(), pathlib.Path(start).resolve())).as_posix()


def section(profile: str, links: Sequence[tuple[int, str, pathlib.Path]], base: pathlib.Path) -> str:
    """A report section linking the dashboards: links = [(feature, why, html path)], relative to `base`, the folder
    of the page the section is written into (reports/<profile>/ for its README.md)."""
    lines = ["## Feature dashboards", ""]
    for feature, why, path in links:
        html_link, md_link = _link(path, base), _link(pathlib.Path(path).with_suffix(".md"), base)
        lines.append(f"- feature {feature} ({why}): [{html_link}]({html_link}), [{md_link}]({md_link})")
    lines.append(f"\nBuild one for any feature: `claims-harness dashboard --profile {profile} --feature N`")
    return "\n".join(lines) + "\n"


def write_index(profile: str, links: Sequence[tuple[int, str, pathlib.Path]], directory, *,
                report: pathlib.Path | None = None) -> pathlib.Path:
    """Write <directory>/README.md, the dashboards' index, its links relative to `directory` (where it lives), with
    a link back to the profile's `report` README when given; returns its path."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    text = section(profile, links, directory)
    if report is not None:
        text = f"[back to the {profile} report]({_link(report, directory)})\n\n" + text
    path = directory / INDEX_NAME
    path.write_text(text, encoding="utf-8")
    return path


def summary_of(study: FeatureStudy) -> dict[str, str]:
    """The comparison figures of a study as (label, text) rows for the page."""
    fr = study.firing
    rows = {f"{o}: positions / max / median / q0.99 / active": (
        f"{fr.n_positions[o]} / {fr.max[o]:.4g} / {fr.quantiles[o]['q0.5']:.4g} / {fr.quantiles[o]['q0.99']:.4g} / "
        f"{fr.active_fraction[o]:.3%}") for o in ORIGINS}
    rows[f"top {fr.top_n} contexts by origin"] = ", ".join(f"{o} {fr.top_origins[o]}" for o in ORIGINS)
    rows["share of MC answer positions in the top contexts"] = (
        f"{fr.answer_share_top:.3f} (base rate among all positions {fr.answer_base_rate:.4f})")
    rows["max plain text / max MC answer"] = f"{fr.max_ratio:.3g}"
    return rows


def dashboard_of(study: FeatureStudy, *, profile: str, checkpoint=None, params=None,
                 accuracies: Mapping[str, str] | None = None) -> Dashboard:
    """A Dashboard from a measured FeatureStudy (logit effects when the checkpoint and SAE are given)."""
    logits = None if checkpoint is None or params is None else logit_effects(checkpoint, params, study.feature)
    return Dashboard(feature=study.feature, profile=profile, reading=study.reading, contexts=study.contexts,
                     sets=study.sets, logits=logits, accuracies=dict(accuracies or {}), summary=summary_of(study))
