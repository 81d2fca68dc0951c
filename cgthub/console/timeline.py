"""The vein-to-vein picture: an SVG of planned vs actual milestones, holds, excursions and the deadline.

Drawn on the server as plain SVG (no script, no external asset): the page shows it as it is, a
screenshot keeps it, and a test can read its elements by their data attributes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from html import escape

from cgthub.console.detail import COURSE, Hold

WIDTH, HEIGHT = 980, 250
LEFT, RIGHT = 110, 30
PLANNED_Y, ACTUAL_Y = 120, 175
LATE_AFTER = timedelta(days=1)
LABEL_GAP = 22.0  # rotated -35°, labels closer than this overlap (sin 35° x 22 ≈ one line of text)


@dataclass(frozen=True)
class Excursion:
    at: datetime
    label: str


def _label(name: str) -> str:
    return name.replace("_", " ")


def render(
    *,
    planned: dict[str, datetime],
    actual: dict[str, datetime],
    holds: list[Hold],
    excursions: list[Excursion],
    deadline: datetime | None,
    at_risk: bool,
    now: datetime,
) -> str:
    """The SVG markup, or a short note when the order has no dated milestone yet."""
    on_course = {s.value for s in COURSE}
    instants = [*planned.values(), *(at for m, at in actual.items() if m in on_course)]
    instants += [h.start for h in holds] + [h.end for h in holds if h.end] + [e.at for e in excursions]
    instants += [deadline] if deadline else []
    if not instants:  # e.g. only enrolled: milestones before collection are not on the course
        return '<p class="muted" id="no-timeline">No dated milestone yet: the picture starts at collection.</p>'
    first, last = min(instants), max(instants)
    # "now" widens the axis only while it is near the course; long after (an order held for months),
    # it is drawn at the right edge so the course keeps a readable scale.
    if now > first and (now - first) < (last - first) * 1.5:
        last = max(last, now)
    span = max((last - first).total_seconds(), 3600.0)
    first -= timedelta(seconds=span * 0.03)
    span *= 1.08
    right_edge = WIDTH - RIGHT

    def x(at: datetime) -> float:
        return min(LEFT + (WIDTH - LEFT - RIGHT) * (at - first).total_seconds() / span, right_edge)

    parts = [
        f'<svg class="v2v" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" '
        'aria-label="vein-to-vein timeline: planned and actual milestones" xmlns="http://www.w3.org/2000/svg">',
        f'<text x="8" y="{PLANNED_Y + 4}" class="axis">planned</text>',
        f'<text x="8" y="{ACTUAL_Y + 4}" class="axis">actual</text>',
        f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{PLANNED_Y}" y2="{PLANNED_Y}" class="track"/>',
        f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{ACTUAL_Y}" y2="{ACTUAL_Y}" class="track"/>',
    ]
    for hold in holds:
        end = hold.end or now
        parts.append(
            f'<rect class="hold" data-hold="{"open" if hold.end is None else "closed"}" x="{x(hold.start):.1f}" '
            f'y="{PLANNED_Y - 18}" width="{max(x(end) - x(hold.start), 4):.1f}" height="{ACTUAL_Y - PLANNED_Y + 36}">'
            f"<title>{escape(hold.reason)} {hold.start:%Y-%m-%d %H:%M}"
            f"{' to ' + format(end, '%Y-%m-%d %H:%M') if hold.end else ', still held'}</title></rect>"
        )
    if deadline is not None:
        cls = "deadline at-risk" if at_risk else "deadline"
        parts.append(
            f'<line class="{cls}" data-deadline="{deadline:%Y-%m-%d}" x1="{x(deadline):.1f}" x2="{x(deadline):.1f}" '
            f'y1="22" y2="{HEIGHT - 20}"/>'
            f'<text class="{cls}" x="{x(deadline) - 4:.1f}" y="30" text-anchor="end">'
            f"vein-to-vein target {deadline:%d %b}{' (at risk)' if at_risk else ''}</text>"
        )
    now_label = "now" if x(now) < right_edge else f"now ({now:%d %b %Y}) →"
    parts.append(
        f'<line class="now" x1="{x(now):.1f}" x2="{x(now):.1f}" y1="40" y2="{HEIGHT - 20}"/>'
        f'<text class="now" x="{x(now) - 4:.1f}" y="{HEIGHT - 6}" text-anchor="end">{now_label}</text>'
    )
    last_label = -100.0
    for status in COURSE:
        name = status.value
        plan, done = planned.get(name), actual.get(name)
        if plan is not None:
            px = x(plan)
            parts.append(
                f'<circle class="planned" data-milestone="{name}" data-kind="planned" cx="{px:.1f}" cy="{PLANNED_Y}" '
                f'r="6"><title>{_label(name)} planned {plan:%Y-%m-%d}</title></circle>'
            )
            if px - last_label >= LABEL_GAP:  # a label too close to the last one is left to the tooltip
                last_label = px
                parts.append(
                    f'<text class="milestone" transform="translate({px:.1f},{PLANNED_Y - 14}) rotate(-35)">'
                    f"{_label(name)}</text>"
                )
        if done is not None:
            late = plan is not None and done - plan > LATE_AFTER
            parts.append(
                f'<circle class="actual{" late" if late else ""}" data-milestone="{name}" data-kind="actual" '
                f'cx="{x(done):.1f}" cy="{ACTUAL_Y}" r="7"><title>{_label(name)} {done:%Y-%m-%d %H:%M}'
                f"{' (late)' if late else ''}</title></circle>"
            )
            if plan is not None:
                parts.append(
                    f'<line class="drift{" late" if late else ""}" x1="{x(plan):.1f}" y1="{PLANNED_Y + 6}" '
                    f'x2="{x(done):.1f}" y2="{ACTUAL_Y - 7}"/>'
                )
    for excursion in excursions:
        ex = x(excursion.at)
        parts.append(
            f'<path class="excursion" data-excursion="{excursion.at:%Y-%m-%dT%H:%M}" '
            f'd="M{ex:.1f},{ACTUAL_Y + 12} l8,14 h-16 z"><title>{escape(excursion.label)}</title></path>'
        )
    parts.append("</svg>")
    return "".join(parts)
