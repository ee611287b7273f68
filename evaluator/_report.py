"""The validation report: many checked answers summed up, as data and as one self-contained HTML page.

The page has no script and loads nothing: its CSS is inline and a Content-Security-Policy
forbids every fetch, so it can be mailed, archived or opened offline and look the same.
Flagged answers come first, each with its evidence: the verdict, R's message, the failing
call, the code with the failing line marked, warnings and what it printed. Entries that carry
task-aware checks (`QualityMark`) are flagged by those checks, and the report adds each check's
pass rate, repaired and top-up answers and a diversity figure per task × theme.
"""

from __future__ import annotations

import datetime as dt
import html
from collections import Counter
from collections.abc import Iterable, Mapping

import msgspec

from evaluator._types import Check, is_flagged

__all__ = ["CheckTally", "QualityMark", "Report", "ReportEntry", "ReportGroup", "build_report", "render_html"]

VERDICT_ORDER = (
    "passed",
    "no_code",
    "parse_error",
    "runtime_error",
    "timeout",
    "memory_limit",
    "output_limit",
    "killed",
    "unevaluated",
)
VERDICT_TEXT = {
    "passed": "ran to the end",
    "no_code": "no R code in the answer",
    "parse_error": "R could not parse the code",
    "runtime_error": "R stopped with an error",
    "timeout": "ran out of time",
    "memory_limit": "ran out of memory",
    "output_limit": "printed or wrote too much",
    "killed": "the process died or was killed",
    "unevaluated": "not evaluated",
}
COLOURS = {
    "passed": "#2e7d32",
    "no_code": "#8d8d8d",
    "parse_error": "#c62828",
    "runtime_error": "#d84315",
    "timeout": "#6a1b9a",
    "memory_limit": "#1565c0",
    "output_limit": "#00838f",
    "killed": "#37474f",
    "unevaluated": "#bdbdbd",
}


class QualityMark(msgspec.Struct, frozen=True, kw_only=True):
    """One named check of an answer or its question: passed or not, blocking or a warning."""

    name: str
    passed: bool
    blocking: bool
    evidence: str = ""


class CheckTally(msgspec.Struct, frozen=True, kw_only=True):
    passed: int = 0
    failed: int = 0

    @property
    def pass_rate(self) -> float:
        return self.passed / (self.passed + self.failed) if self.passed + self.failed else 0.0


class ReportEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One answer and what its check found; `check` is None when it was not evaluated.

    `checks`, when given, are the task-aware checks of the pair: a failed blocking one flags it.
    `repaired` (the answer was rewritten from evidence and now passes) and `top_up` (it replaced a
    dropped item) come from the pair's provenance, as does `cost_usd` (what its model calls cost;
    None when not known).
    """

    id: str
    task: str = ""
    theme: str = ""
    question: str = ""
    answer: str = ""
    check: Check | None = None
    expected: str | None = None
    """A verdict someone expects (a labelled validation set); the report counts agreement."""
    checks: tuple[QualityMark, ...] = ()
    repaired: bool = False
    top_up: bool = False
    cost_usd: float | None = None

    @property
    def verdict(self) -> str:
        return self.check.verdict if self.check is not None else "unevaluated"

    @property
    def flagged(self) -> bool:
        if self.checks:
            return any(c.blocking and not c.passed for c in self.checks)
        return self.check is not None and is_flagged(self.check.verdict, self.task)


class ReportGroup(msgspec.Struct, frozen=True, kw_only=True):
    task: str
    theme: str
    total: int
    passed: int
    flagged: int
    verdicts: dict[str, int]
    checks: dict[str, CheckTally] = {}
    repaired: int = 0
    top_up: int = 0
    diversity: float | None = None
    cost_usd: float | None = None
    cost_per_pair_usd: float | None = None


def _cost(members: list[ReportEntry]) -> tuple[float | None, float | None]:
    """The entries' summed cost and the cost per entry; None unless every entry's cost is known."""
    costs = [m.cost_usd for m in members]
    if not costs or None in costs:
        return None, None
    total = sum(c for c in costs if c is not None)
    return round(total, 6), round(total / len(costs), 6)


class Report(msgspec.Struct, frozen=True, kw_only=True):
    title: str
    generated_at: str
    total: int
    passed: int
    flagged: int
    unevaluated: int
    verdicts: dict[str, int]
    groups: list[ReportGroup]
    entries: list[ReportEntry]
    environment: dict[str, str] = {}
    expected_total: int = 0
    expected_agree: int = 0
    disagreements: list[str] = []
    """Ids of entries whose verdict is not the expected one."""
    cost_usd: float | None = None
    cost_per_pair_usd: float | None = None

    @property
    def pass_rate(self) -> float:
        evaluated = self.total - self.unevaluated
        return self.passed / evaluated if evaluated else 0.0


def build_report(
    entries: Iterable[ReportEntry],
    *,
    title: str = "R answer validation report",
    environment: Mapping[str, str] | None = None,
    now: dt.datetime | None = None,
    diversity: Mapping[tuple[str, str], float | None] | None = None,
) -> Report:
    """Sum the entries up; flagged entries first (by verdict, then id), then the rest. `diversity`
    per (task, theme) is computed by the caller (it needs the ROUGE-L tokenizers)."""
    items = list(entries)
    verdicts = Counter(e.verdict for e in items)
    groups: dict[tuple[str, str], list[ReportEntry]] = {}
    for e in items:
        groups.setdefault((e.task, e.theme), []).append(e)
    labelled = [e for e in items if e.expected is not None]
    disagree = [e.id for e in labelled if e.expected != e.verdict]
    rank = {v: i for i, v in enumerate(VERDICT_ORDER)}
    ordered = sorted(items, key=lambda e: (not e.flagged, rank.get(e.verdict, 99), e.id))
    cost, per_pair = _cost(items)
    return Report(
        title=title,
        generated_at=(now or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds"),
        total=len(items),
        passed=verdicts.get("passed", 0),
        flagged=sum(e.flagged for e in items),
        unevaluated=verdicts.get("unevaluated", 0),
        verdicts={v: verdicts[v] for v in VERDICT_ORDER if verdicts.get(v)},
        groups=[
            ReportGroup(
                task=task,
                theme=theme,
                total=len(members),
                passed=sum(m.verdict == "passed" for m in members),
                flagged=sum(m.flagged for m in members),
                verdicts=dict(Counter(m.verdict for m in members)),
                checks=_tally(members),
                repaired=sum(m.repaired for m in members),
                top_up=sum(m.top_up for m in members),
                diversity=(diversity or {}).get((task, theme)),
                cost_usd=_cost(members)[0],
                cost_per_pair_usd=_cost(members)[1],
            )
            for (task, theme), members in sorted(groups.items())
        ],
        entries=ordered,
        environment=dict(environment or {}),
        expected_total=len(labelled),
        expected_agree=len(labelled) - len(disagree),
        disagreements=disagree,
        cost_usd=cost,
        cost_per_pair_usd=per_pair,
    )


def _tally(members: list[ReportEntry]) -> dict[str, CheckTally]:
    counts: Counter[tuple[str, bool]] = Counter((c.name, c.passed) for m in members for c in m.checks)
    return {
        name: CheckTally(passed=counts[(name, True)], failed=counts[(name, False)])
        for name in sorted({n for n, _ in counts})
    }


# ---- HTML -----------------------------------------------------------------------------

_CSS = """
:root { --fg:#1d232a; --muted:#5f6b76; --line:#e3e7ec; --bg:#f6f8fa; --bad:#fdecea; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", "Noto Sans", "Noto Sans CJK JP", sans-serif;
       color: var(--fg); background: #fff; }
main { max-width: 1100px; margin: 0 auto; padding: 28px 24px 60px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 34px 0 12px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
.sub { color: var(--muted); margin: 0 0 22px; }
.cards { display: grid; grid-template-columns: repeat(4, 1fr); gap: 12px; }
.card { background: var(--bg); border: 1px solid var(--line); border-radius: 8px; padding: 12px 16px; }
.card b { display: block; font-size: 28px; line-height: 1.2; }
.card span { color: var(--muted); font-size: 13px; }
.bar { display: flex; height: 18px; border-radius: 9px; overflow: hidden; margin: 18px 0 8px; background: var(--line); }
.bar i { display: block; height: 100%; }
.legend { display: flex; flex-wrap: wrap; gap: 6px 16px; font-size: 13px; color: var(--muted); }
.dot { display: inline-block; width: 10px; height: 10px; border-radius: 50%; margin-right: 5px; vertical-align: -1px; }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: var(--bg); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.bad { color: #b71c1c; font-weight: 600; }
th.v { font-size: 12px; font-weight: 600; }
.wide { overflow-x: auto; }
.badge { display: inline-block; color: #fff; border-radius: 4px; padding: 0 7px; font-size: 12px; font-weight: 600;
         white-space: nowrap; }
details.item { border: 1px solid var(--line); border-radius: 8px; margin: 10px 0; background: #fff; }
details.item > summary { cursor: pointer; padding: 10px 14px; list-style: none; display: flex; gap: 10px;
                         align-items: baseline; flex-wrap: wrap; }
details.item > summary::-webkit-details-marker { display: none; }
details.item[open] > summary { border-bottom: 1px solid var(--line); background: var(--bg);
                               border-radius: 8px 8px 0 0; }
.id { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 13px; }
.where { color: var(--muted); font-size: 13px; }
.body { padding: 10px 14px 14px; }
.msg { background: var(--bad); border-left: 4px solid #c62828; padding: 8px 12px; border-radius: 4px;
       white-space: pre-wrap; word-break: break-word;
       font: 13px/1.5 ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; }
.label { font-size: 12px; text-transform: uppercase; letter-spacing: .04em; color: var(--muted); margin: 12px 0 4px; }
.q { white-space: pre-wrap; word-break: break-word; }
pre { margin: 0; background: #0f1720; color: #e6edf3; border-radius: 6px; padding: 10px 0; overflow-x: auto;
      font: 12.5px/1.55 ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; }
pre.out { background: var(--bg); color: var(--fg); padding: 10px 12px; max-height: 320px; overflow: auto; }
.ln { display: block; padding: 0 12px 0 0; white-space: pre; }
.ln::before { content: attr(data-n); display: inline-block; width: 3.2em; padding-right: 10px; margin-right: 10px;
              text-align: right; color: #6e7781; border-right: 1px solid #30363d; }
.ln.hit { background: #5c1a1a; }
.ln.hit::before { color: #ffb4b4; }
ul.warn { margin: 0; padding-left: 20px; font-size: 14px; }
.expected { color: #b71c1c; font-size: 13px; font-weight: 600; }
.agree { font-size: 15px; margin: 0 0 10px; }
.env { font-size: 13px; color: var(--muted); }
.env td { padding: 3px 10px; border: 0; }
@media print { details.item { break-inside: avoid; } }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _badge(verdict: str) -> str:
    return f'<span class="badge" style="background:{COLOURS.get(verdict, "#555")}">{_e(verdict)}</span>'


def _code(code: str, hit: int | None) -> str:
    lines = code.split("\n")
    rows = [
        f'<span class="ln{" hit" if n == hit else ""}" data-n="{n}">{_e(line) or " "}</span>'
        for n, line in enumerate(lines, start=1)
    ]
    return "<pre>" + "".join(rows) + "</pre>"


def _entry(e: ReportEntry, *, open_: bool) -> str:
    c = e.check
    where = " · ".join(x for x in (e.task, e.theme) if x)
    parts = [
        f'<details class="item" id="{_e(e.id)}"{" open" if open_ else ""}>',
        f'<summary>{_badge(e.verdict)} <span class="id">{_e(e.id)}</span> <span class="where">{_e(where)}</span>',
    ]
    if e.expected is not None and e.expected != e.verdict:
        parts.append(f'<span class="expected">expected {_e(e.expected)}</span>')
    if c is not None and c.message:
        first = c.message.splitlines()[0] if c.message.splitlines() else c.message
        parts.append(f'<span class="where">— {_e(first[:140])}</span>')
    blocking = [q.name for q in e.checks if q.blocking and not q.passed]
    if blocking:
        parts.append(f'<span class="expected">{_e(", ".join(blocking))}</span>')
    parts.append('</summary><div class="body">')
    if e.question:
        parts.append(f'<div class="label">Question</div><div class="q">{_e(e.question)}</div>')
    failed = [q for q in e.checks if not q.passed]
    if failed:
        items = "".join(
            f"<li><b>{_e(q.name)}</b>{'' if q.blocking else ' (warning)'}: {_e(q.evidence)}</li>"
            for q in failed
        )
        parts.append(f'<div class="label">Failed checks</div><ul class="warn">{items}</ul>')
    if e.repaired:
        parts.append('<div class="where">repaired from the evidence of an earlier answer</div>')
    if c is not None:
        if c.message or c.failing_call:
            parts.append(f'<div class="label">Evidence: {_e(VERDICT_TEXT.get(c.verdict, c.verdict))}</div>')
            text = c.message or ""
            if c.failing_call:
                text += f"\nin: {c.failing_call}"
            if c.line is not None:
                text += f"\nat code line {c.line}" + (
                    f" (answer line {c.answer_line})" if c.answer_line is not None else ""
                )
            parts.append(f'<div class="msg">{_e(text.strip())}</div>')
        if c.code:
            label = f"Code run ({c.blocks} block{'s' if c.blocks != 1 else ''})" if c.blocks else "Code run"
            parts.append(f'<div class="label">{label}</div>{_code(c.code, c.line)}')
        if c.warnings:
            items = "".join(f"<li>{_e(w)}</li>" for w in c.warnings)
            parts.append(f'<div class="label">Warnings</div><ul class="warn">{items}</ul>')
        if c.stdout:
            more = " (cut)" if c.stdout_truncated else ""
            parts.append(f'<div class="label">Output{more}</div><pre class="out">{_e(c.stdout)}</pre>')
        if c.code:
            parts.append(f'<div class="where">ran in {c.duration_ms:.0f} ms</div>')
    elif e.answer:
        parts.append(f'<div class="label">Answer</div><div class="q">{_e(e.answer)}</div>')
    parts.append("</div></details>")
    return "".join(parts)


def render_html(report: Report) -> str:
    """One self-contained HTML document: no script, no external resource."""
    evaluated = report.total - report.unevaluated
    cards = [
        (report.total, "answers"),
        (report.passed, "ran to the end"),
        (report.flagged, "flagged"),
        (f"{report.pass_rate:.0%}" if evaluated else "–", "pass rate of the evaluated"),
    ]
    if report.cost_per_pair_usd is not None:
        cards.append((f"${report.cost_per_pair_usd:.4f}", f"a pair (${report.cost_usd:.2f} in all)"))
    bar = "".join(
        f'<i style="width:{100 * n / report.total:.3f}%;background:{COLOURS.get(v, "#555")}" title="{_e(v)}: {n}"></i>'
        for v, n in report.verdicts.items()
        if report.total
    )
    legend = "".join(
        f'<span><span class="dot" style="background:{COLOURS.get(v, "#555")}"></span>{_e(v)} '
        f"<b>{n}</b> — {_e(VERDICT_TEXT.get(v, v))}</span>"
        for v, n in report.verdicts.items()
    )
    verdict_cols = [v for v in VERDICT_ORDER if v in report.verdicts]
    head = "".join(f'<th class="num v">{_e(v).replace("_", "_<wbr>")}</th>' for v in verdict_cols)
    head += "<th class='num'>repaired</th><th class='num'>top-up</th><th class='num'>diversity</th>"
    head += "<th class='num'>$ a pair</th>"
    rows = "".join(
        f"<tr><td>{_e(g.task)}</td><td>{_e(g.theme)}</td><td class='num'>{g.total}</td>"
        f"<td class='num'>{g.flagged}</td>"
        + "".join(f"<td class='num'>{g.verdicts.get(v, 0) or ''}</td>" for v in verdict_cols)
        + f"<td class='num'>{g.repaired or ''}</td><td class='num'>{g.top_up or ''}</td>"
        + f"<td class='num'>{'' if g.diversity is None else f'{g.diversity:.2f}'}</td>"
        + f"<td class='num'>{'' if g.cost_per_pair_usd is None else f'{g.cost_per_pair_usd:.4f}'}</td>"
        + "</tr>"
        for g in report.groups
    )
    check_names = sorted({name for g in report.groups for name in g.checks})
    check_head = "".join(f'<th class="num v">{_e(n).replace("_", "_<wbr>")}</th>' for n in check_names)

    def rate(g: ReportGroup, name: str) -> str:
        t = g.checks.get(name)
        if t is None:
            return "<td class='num'></td>"
        bad = " class='num bad'" if t.failed else " class='num'"
        return f"<td{bad} title='{t.passed} passed, {t.failed} failed'>{t.pass_rate:.0%}</td>"

    check_rows = "".join(
        f"<tr><td>{_e(g.task)}</td><td>{_e(g.theme)}</td>"
        + "".join(rate(g, n) for n in check_names)
        + "</tr>"
        for g in report.groups
        if g.checks
    )
    flagged = [e for e in report.entries if e.flagged]
    others = [e for e in report.entries if not e.flagged]
    env_rows = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in report.environment.items())
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(report.title)}</title><style>{_CSS}</style></head><body><main>",
        f"<h1>{_e(report.title)}</h1>",
        f'<p class="sub">{report.total} answers, generated {_e(report.generated_at)}</p>',
        '<div class="cards">'
        + "".join(f'<div class="card"><b>{_e(v)}</b><span>{_e(t)}</span></div>' for v, t in cards)
        + "</div>",
        f'<div class="bar">{bar}</div><div class="legend">{legend}</div>',
        "<h2>By task and theme</h2>",
        f"<div class='wide'><table><thead><tr><th>task</th><th>theme</th><th class='num'>answers</th>"
        f"<th class='num'>flagged</th>{head}</tr></thead><tbody>{rows}</tbody></table></div>",
    ]
    if check_rows:
        out += [
            "<h2>Checks by task and theme</h2>",
            "<p class='sub'>Share of the checked questions and answers that passed each check; "
            "diversity above is each question's highest ROUGE-L against the others of its cell, averaged "
            "(lower is more varied).</p>",
            f"<div class='wide'><table><thead><tr><th>task</th><th>theme</th>{check_head}</tr></thead>"
            f"<tbody>{check_rows}</tbody></table></div>",
        ]
    if report.expected_total:
        by_id = {e.id: e for e in report.entries}

        def row(i: str) -> str:
            e = by_id[i]
            evidence = (e.check.message or "") if e.check is not None else ""
            return (
                f"<tr><td class='id'><a href='#{_e(i)}'>{_e(i)}</a></td><td>{_badge(e.expected or '')}</td>"
                f"<td>{_badge(e.verdict)}</td><td>{_e(evidence)}</td></tr>"
            )

        rows_x = "".join(row(i) for i in report.disagreements)
        out += [
            "<h2>Against the expected verdicts</h2>",
            f'<p class="agree"><b>{report.expected_agree} of {report.expected_total}</b> labelled answers got the '
            f"verdict they were expected to get.</p>",
        ]
        if rows_x:
            out.append(
                "<table><thead><tr><th>id</th><th>expected</th><th>got</th><th>evidence</th></tr></thead>"
                f"<tbody>{rows_x}</tbody></table>"
            )
    out.append(f"<h2>Flagged answers ({len(flagged)})</h2>")
    if flagged:
        out += [_entry(e, open_=i < 50) for i, e in enumerate(flagged)]
    else:
        out.append("<p>None: every evaluated answer ran to the end (or needed no code).</p>")
    out.append(f"<h2>Other answers ({len(others)})</h2>")
    out += [_entry(e, open_=False) for e in others]
    if env_rows:
        out.append(f'<h2>How they ran</h2><table class="env"><tbody>{env_rows}</tbody></table>')
    out.append("</main></body></html>")
    return "\n".join(out)
