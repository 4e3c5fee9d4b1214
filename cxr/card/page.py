"""The model card as one HTML page: plain semantic HTML (headed tables, figures with alt text and captions),
one stylesheet inline, no script, every image embedded, so it opens offline, in MLflow's artifact view, and
prints. Each number comes from :class:`cxr.card.content.ModelCard`; nothing is computed here.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence

from cxr.card.content import FindingRow, GalleryItem, Localization, ModelCard
from cxr.card.figures import BLUE, VERMILLION, png_uri, reliability_svg
from cxr.card.provenance import Provenance
from cxr.data.stats import PREVALENCE_CHART
from cxr.findings import FINDINGS
from cxr.learn.subgroups import ATTRIBUTES, Subgroup

ATTRIBUTE_TITLES = {"sex": "Sex", "age": "Age band (years)", "view": "View position"}
BALANCE_CHART = "charts/balance.png"

STYLE = f"""
:root {{ font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1a1a1a; }}
body {{ max-width: 1180px; margin: 0 auto; padding: 1rem 1.25rem 3rem; line-height: 1.4; }}
h1 {{ font-size: 1.6rem; margin-bottom: .2rem; }} h2 {{ border-bottom: 2px solid {BLUE}; padding-bottom: .2rem; }}
table {{ border-collapse: collapse; margin: .5rem 0 1rem; font-size: .9rem; }}
caption {{ text-align: left; font-weight: 600; padding: .3rem 0; }}
th, td {{ border: 1px solid #c8c8c8; padding: .25rem .45rem; vertical-align: top; }}
thead th {{ background: #f0f4f8; }} tbody th {{ text-align: left; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
.hidden {{ position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); }}
dl.settings {{ columns: 15rem; font-size: .85rem; }} dl.settings div {{ break-inside: avoid; }}
dl.settings dt {{ display: inline; font-weight: 600; }}
dl.settings dd {{ display: inline; margin: 0 0 0 .4rem; overflow-wrap: anywhere; }}
td small, th small {{ display: block; color: #4a4a4a; font-weight: normal; }}
td.insufficient {{ background: repeating-linear-gradient(45deg, #eee, #eee 6px, #e2e2e2 6px, #e2e2e2 12px);
  color: #595959; }}
.note {{ font-size: .85rem; color: #4a4a4a; }} .worst {{ outline: 2px solid {VERMILLION}; outline-offset: -2px; }}
dl.facts {{ display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; }}
dl.facts dt {{ font-weight: 600; }}
.grid {{ display: flex; flex-wrap: wrap; gap: .75rem; }} figure {{ margin: 0; max-width: 100%; }}
.gallery figure {{ width: 270px; }} .gallery img {{ width: 100%; height: auto; border: 1px solid #c8c8c8; }}
figcaption {{ font-size: .85rem; }} .hit {{ color: {BLUE}; font-weight: 600; }}
.miss {{ color: {VERMILLION}; font-weight: 600; }} img.chart {{ max-width: 100%; height: auto; }}
svg.reliability text {{ font-size: 10px; fill: #333; }} nav a {{ margin-right: .8rem; }}
.scroll {{ overflow-x: auto; }} .warning {{ border-left: 4px solid {VERMILLION}; padding: .3rem .6rem; }}
@media print {{ nav {{ display: none; }} body {{ max-width: none; padding: 0; }} h2 {{ break-after: avoid; }}
  figure, tr, svg {{ break-inside: avoid; }} .scroll {{ overflow: visible; }} }}
@page {{ size: A4 landscape; margin: 12mm; }}
"""


def _e(value: object) -> str:
    return html.escape(str(value))


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _ci(ci: Sequence[float] | None, digits: int = 2) -> str:
    return "" if ci is None else f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def _table(caption: str, head: Sequence[str], rows: Iterable[str], cls: str = "") -> str:
    heads = "".join(f'<th scope="col">{h}</th>' for h in head)
    return (
        f'<div class="scroll"><table{f" class={cls!r}" if cls else ""}><caption>{caption}</caption>'
        f"<thead><tr>{heads}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def render(card: ModelCard, images: Mapping[str, bytes]) -> str:
    """The page; ``images`` holds the PNGs it embeds by their file names (charts, the gallery's overlays)."""
    sections = [
        ("summary", "Summary", _summary(card)),
        ("findings", "Per finding", _findings(card)),
        ("calibration", "Calibration", _calibration(card.findings)),
        ("subgroups", "Subgroups", _subgroups(card)),
        ("localization", "Where the model looks", _localization(card.localization, images)),
        ("data", "Data", _data(card.provenance, images)),
        ("lineage", "Lineage", _lineage(card.provenance)),
        ("registry", "Registry and gate", _registry(card.provenance)),
    ]
    nav = "".join(f'<a href="#{key}">{title}</a>' for key, title, _ in sections)
    body = "".join(f'<section id="{key}"><h2>{title}</h2>{content}</section>' for key, title, content in sections)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Model card: {_e(card.model)}</title><style>{STYLE}</style></head><body>"
        f"<header><h1>Model card</h1><p>{_e(card.model)} on the {_e(card.split)} split of dataset "
        f'<code>{_e(card.dataset)}</code></p><nav aria-label="Sections">{nav}</nav></header>'
        f'<main>{body}</main><footer class="note"><p>Made {_e(card.generated)} by cxr-pipeline '
        f"{_e(card.code_version)}. Intervals: {card.n_boot} patient-level bootstrap resamples, 95 %.</p></footer>"
        "</body></html>\n"
    )


def _summary(card: ModelCard) -> str:
    rows = [
        ("Images / patients", f"{card.n_images:,} / {card.n_patients:,}"),
        ("Mean AUROC", f"{_num(card.mean_auroc)} over the findings with both classes"),
        ("False “No Finding” rate", _false_nf(card.with_finding, card.false_no_finding)),
        ("Thresholds", _e(card.thresholds_from)),
    ]
    short = [s for s in card.subgroups if s.mean_auroc is not None]
    if short:
        worst = min(short, key=lambda s: s.mean_auroc)  # type: ignore[arg-type, return-value]
        rows.append(("Lowest subgroup mean AUROC", f"{_num(worst.mean_auroc)} ({_group_name(worst)})"))
    gate = card.provenance.gate
    if gate is not None:
        rows.append(("Registry", f"{_e(gate.model)} version {_e(gate.version)}: {_verdict(gate.promoted)}"))
    facts = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
    warned = "".join(f'<p class="warning" role="note"><strong>Warning:</strong> {_e(w)}</p>' for w in card.warnings)
    return f'{warned}<dl class="facts">{facts}</dl>'


def _false_nf(with_finding: int, rate: float | None) -> str:
    if rate is None:
        return "– (no image with a finding)"
    return f"{_pct(rate)} ({round(rate * with_finding)} of {with_finding} images with a finding called healthy)"


def _group_name(group: Subgroup) -> str:
    return f"{ATTRIBUTE_TITLES[group.attribute].split(' ')[0].lower()} {_e(group.group)}"


def _verdict(promoted: bool) -> str:
    return "promoted to champion" if promoted else "stays challenger"


def _findings(card: ModelCard) -> str:
    head = ["Finding", "Labelled", "Positives", "AUROC [95 % CI]", "AUPRC [95 % CI]", "Threshold", "Sensitivity",
            "Specificity", "Calibration error"]  # fmt: skip
    rows = []
    for row in card.findings:
        m = row.metrics
        missing = f"<small>{m.n_missing} unlabelled</small>" if m.n_missing else ""
        rows.append(
            f'<tr data-finding="{_e(row.finding)}"><th scope="row">{_e(row.finding)}</th>'
            f'<td class="num">{m.n:,}{missing}</td><td class="num">{m.n_pos:,}</td>'
            f'<td class="num">{_num(m.auroc)}<small>{_ci(m.auroc_ci95)}</small></td>'
            f'<td class="num">{_num(m.auprc)}<small>{_ci(m.auprc_ci95)}</small></td>'
            f'<td class="num">{_num(m.threshold)}</td><td class="num">{_pct(m.sensitivity)}</td>'
            f'<td class="num">{_pct(m.specificity)}</td><td class="num">{_num(row.calibration.ece)}</td></tr>'
        )
    caption = f"Each finding on the {_e(card.split)} images that label it; sensitivity and specificity at the threshold"
    return _table(caption, head, rows, "findings")


def _calibration(rows: Sequence[FindingRow]) -> str:
    figures = "".join(
        f"<figure>{reliability_svg(r.finding, r.calibration, f'rel{i}')}"
        f"<figcaption>{_e(r.finding)}: error {_num(r.calibration.ece)}</figcaption></figure>"
        for i, r in enumerate(rows)
    )
    return (
        '<p class="note">Each dot is a bin of images with similar predicted probabilities: its mean prediction '
        "against the share that is positive (dot area: the bin's images). A calibrated model lies on the dashed "
        "diagonal; the calibration error is the images-weighted mean gap.</p>"
        f'<div class="grid">{figures}</div>'
    )


def _subgroups(card: ModelCard) -> str:
    parts = [
        f'<p class="note">AUROC per subgroup with its patient-level 95 % interval and the positives / labelled '
        f"images behind it. A cell with fewer than {card.min_cases} positives or negatives is greyed: its number "
        "says little about the subgroup. The false “No Finding” rate is the share of images with a finding that "
        "the model calls healthy (no finding at or above its threshold).</p>"
    ]
    for attribute in ATTRIBUTES:
        groups = [g for g in card.subgroups if g.attribute == attribute]
        if groups:
            parts.append(_subgroup_table(attribute, groups, card.min_cases))
    return "".join(parts)


def _subgroup_table(attribute: str, groups: Sequence[Subgroup], min_cases: int) -> str:
    counts = (f"{_e(g.group)}<small>{g.n_images:,} images, {g.n_patients:,} patients</small>" for g in groups)
    head = ["Finding", *counts]
    rows = []
    for finding in FINDINGS:
        cells = []
        for g in groups:
            c = g.findings[finding]
            grey = "" if c.sufficient else ' class="insufficient num" title="too few positives or negatives"'
            flag = "" if c.sufficient else '<span class="hidden"> (too few cases)</span>'
            counts = f"{c.n_pos} / {c.n}"
            cells.append(
                f"<td{grey or ' class=num'}>{_num(c.auroc)}{flag}<small>{_ci(c.auroc_ci95)} {counts}</small></td>"
            )
        rows.append(f'<tr data-finding="{_e(finding)}"><th scope="row">{_e(finding)}</th>{"".join(cells)}</tr>')
    means = "".join(f'<td class="num">{_num(g.mean_auroc)}</td>' for g in groups)
    rows.append(f'<tr class="mean"><th scope="row">Mean AUROC (cells not greyed)</th>{means}</tr>')
    rates = [g.false_no_finding for g in groups if g.false_no_finding is not None and g.with_finding >= min_cases]
    worst = max(rates) if rates and max(rates) > min(rates) else None  # the highest, when the groups differ
    nf = []
    for g in groups:
        few = g.with_finding < min_cases
        cls = "insufficient num" if few else ("worst num" if g.false_no_finding == worst else "num")
        nf.append(f'<td class="{cls}">{_false_nf(g.with_finding, g.false_no_finding)}</td>')
    rows.append(f'<tr class="false-no-finding"><th scope="row">False “No Finding” rate</th>{"".join(nf)}</tr>')
    caption = f"By {ATTRIBUTE_TITLES[attribute].lower()}"
    return _table(caption, head, rows, f"subgroups subgroups-{attribute}")


def _localization(loc: Localization | None, images: Mapping[str, bytes]) -> str:
    if loc is None:
        return "<p>The split has no boxes to score the model's heatmaps against.</p>"
    ts = loc.thresholds
    head = ["Finding", "Boxes", *(f"Model, T = {t:g}" for t in ts), *(f"Random, T = {t:g}" for t in ts)]
    rows = [
        f'<tr><th scope="row">{_e(f)}</th><td class="num">{s.n}</td>'
        + "".join(f'<td class="num">{_pct(s.accuracy[t])}</td>' for t in ts)
        + "".join(f'<td class="num">{_pct(loc.random[f].accuracy[t])}</td>' for t in ts)
        + "</tr>"
        for f, s in sorted(loc.scores.items(), key=lambda kv: FINDINGS.index(kv[0]))
    ]
    caption = "Share of true boxes the heatmap's box finds (IoBB > T), beside random heatmaps (the floor)"
    gallery = "".join(_gallery_item(item, images) for item in loc.gallery)
    return (
        '<p class="note">For each true box, the model\'s class activation map of that finding is thresholded and '
        "its largest region boxed; the box counts as found when the intersection over the predicted box's area "
        "(IoBB) exceeds T (Wang et al., 2017).</p>"
        + _table(caption, head, rows, "localization")
        + f'<div class="grid gallery">{gallery}</div>'
    )


def _gallery_item(item: GalleryItem, images: Mapping[str, bytes]) -> str:
    hits = [f"{t:g}" for t, hit in item.hits.items() if hit]
    misses = [f"{t:g}" for t, hit in item.hits.items() if not hit]
    said = [f'<span class="hit">✓ hit</span> at T = {", ".join(hits)}'] if hits else []
    said += [f'<span class="miss">✗ miss</span> at T = {", ".join(misses)}'] if misses else []
    verdict = "; ".join(said)
    alt = (
        f"Heatmap of {item.finding} over image {item.image_id}, with the true box (sky blue) and the box the "
        f"heatmap gives (vermillion); IoBB {item.iobb:.2f}"
    )
    return (
        f'<figure><img src="{png_uri(images[item.file])}" alt="{_e(alt)}" loading="eager">'
        f"<figcaption>{_e(item.finding)}, {_e(item.image_id)}: IoBB {item.iobb:.2f}. {verdict}</figcaption></figure>"
    )


def _data(p: Provenance, images: Mapping[str, bytes]) -> str:
    parts = []
    if p.stats is not None:
        splits = list(p.stats.splits)
        head = ["Finding", *(f"{_e(s)}<small>{p.stats.splits[s].n:,} images</small>" for s in splits)]
        rows = [
            f'<tr><th scope="row">{_e(f)}</th>'
            + "".join(
                f'<td class="num">{p.stats.splits[s].findings[f].n_pos:,}'
                f"<small>{_pct(p.stats.splits[s].findings[f].freq_pos)}</small></td>"
                for s in splits
            )
            + "</tr>"
            for f in FINDINGS
        ]
        parts.append(_table("Positives per split (share of the images that label the finding)", head, rows))
    if PREVALENCE_CHART in images:
        parts.append(_chart(images[PREVALENCE_CHART], "Positives and negatives per finding in each split"))
    if p.manifest is None:
        parts.append(f"<p>What balancing did is not known: {_e(p.manifest_missing)}.</p>")
        return "".join(parts)
    m = p.manifest
    what = m.strategy + (f", target {m.target} ({m.mode})" if m.target else "")
    before, after = m.train_prevalence["before"], m.train_prevalence["after"]
    weights = m.class_weights or {}
    rows = [
        f'<tr><th scope="row">{_e(f)}</th><td class="num">{_pct(before[f])}</td><td class="num">{_pct(after[f])}</td>'
        + (f'<td class="num">{weights[f].w_pos:.3f} / {weights[f].w_neg:.3f}</td>' if weights else "")
        + "</tr>"
        for f in FINDINGS
    ]
    head = ["Finding", "Positive draws before", "after", *(["Loss weights w+ / w−"] if m.class_weights else [])]
    parts.append(f"<p>Training manifest <code>{_e(m.digest)}</code>: balancing <strong>{_e(what)}</strong>.</p>")
    parts.append(_table("What balancing did to the training split", head, rows))
    if BALANCE_CHART in images:
        parts.append(_chart(images[BALANCE_CHART], "Share of positive training draws per finding, before and after"))
    return "".join(parts)


def _chart(png: bytes, alt: str) -> str:
    image = f'<img class="chart" src="{png_uri(png)}" alt="{_e(alt)}">'
    return f"<figure>{image}<figcaption>{_e(alt)}</figcaption></figure>"


def _lineage(p: Provenance) -> str:
    rows: list[tuple[str, str]] = []
    chain = p.lineage
    if chain is None:
        rows.append(("Lineage", f"not recorded: {_e(p.lineage_missing)}"))
    else:
        m, r, man = chain.model, chain.run, chain.manifest
        aliases = _e(", ".join(m.aliases) or "none")
        named = f" ({_e(m.name)} version {_e(m.version)}, aliases {aliases})" if m.name else ""
        rows += [
            ("Model", f"<code>{_e(m.uri)}</code>{named}"),
            (
                "Run",
                f"<code>{_e(r.id)}</code> ({_e(r.status)}), experiment {_e(r.experiment_id)}, Prefect flow run "
                f"{_e(r.prefect_flow_run_id or '–')}, val mean AUROC {_num(r.val_mean_auroc)}",
            ),
            ("Trained by code", _e(r.code_version or "–")),
            ("Manifest", f"<code>{_e(man.digest)}</code> ({_e(man.strategy)}) at <code>{_e(man.uri)}</code>"),
        ]
        if r.parent_model:
            rows.append(("Started from", f"<code>{_e(r.parent_model)}</code>"))
        for dataset, source in ((chain.dataset, chain.source), *chain.others):
            created = f", created {_e(dataset.created)}" if dataset.created else ""
            rows.append(
                ("Dataset version", f"<code>{_e(dataset.digest)}</code> at <code>{_e(dataset.path)}</code>{created}")
            )
            if source:
                adapter = source.get("adapter") or {"name": "nih", "version": 1}
                read_by = f"{_e(adapter['name'])} adapter v{_e(adapter['version'])}"
                table = _e(source.get("label_table"))
                rows.append(
                    ("Source archive", f"<code>{_e(source.get('root'))}</code> ({read_by}, label table {table})")
                )
    if p.trained_on:
        rows.append(("Trained on dataset", f"<code>{_e(p.trained_on)}</code>"))
    facts = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
    settings = "".join(
        f"<div><dt>{_e(k)}</dt><dd>{_e(v)}</dd></div>" for k, v in sorted(p.settings.items()) if v is not None
    )
    return f'<dl class="facts">{facts}</dl><h3>Training settings</h3><dl class="settings">{settings}</dl>'


def _registry(p: Provenance) -> str:
    gate = p.gate
    if gate is None:
        tags = p.lineage.model if p.lineage is not None else None
        if tags is not None and tags.gate:
            return f"<p>{_e(tags.gate)}: {_e(tags.gate_reasons)}</p>"
        return "<p>This model did not come through the registry's gate.</p>"
    reasons = "".join(f"<li>{_e(r)}</li>" for r in gate.reasons)
    rule = gate.rule
    parts = [
        f"<p><strong>{_e(gate.model)} version {_e(gate.version)}: {_verdict(gate.promoted)}</strong>"
        + (
            f" (compared with champion version {_e(gate.champion_version)} on the validation images of "
            f"<code>{_e(gate.dataset)}</code>)"
            if gate.champion_version
            else " (there was no champion to compare with)"
        )
        + f"</p><ul>{reasons}</ul>",
        f'<p class="note">Rule: promote when the one-sided {rule.level:g} lower bound of the mean AUROC gain exceeds '
        f"{rule.margin:g}, and no finding significantly drops by more than {rule.max_drop:g} "
        f"({rule.n_boot} paired patient resamples).</p>",
    ]
    c = gate.comparison
    if c is not None:
        parts.append(
            f"<p>On {c.n_images:,} validation images of {c.n_patients:,} patients: challenger "
            f"{_num(c.challenger_mean)}, champion {_num(c.champion_mean)}, gain {_num(c.mean_gain)} "
            f"(lower bound {_num(c.mean_gain_lower)}).</p>"
        )
        rows = [
            f'<tr><th scope="row">{_e(f)}</th>'
            + "".join(f'<td class="num">{_num(v)}</td>' for v in (d.challenger, d.champion, d.gain, d.upper))
            + f"<td>{'compared' if d.compared else 'too few patients'}{'; a regression' * d.regression}</td></tr>"
            for f, d in c.findings.items()
        ]
        head = ["Finding", "Challenger", "Champion", "Gain", "Upper bound", "Note"]
        parts.append(_table("The gate's evidence per finding (AUROC on validation)", head, rows))
    return "".join(parts)
