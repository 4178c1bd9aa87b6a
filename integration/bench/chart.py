#!/usr/bin/env python3
"""Draws docs/benchmarks.svg from the benchmark results (results/*.json,
written by the drivers): for every case, each target's median as a ratio to
the direct connection measured in the same run, one bar per target.

    integration/bench/chart.py            writes docs/benchmarks.svg
    integration/bench/chart.py --check    exits 1 if the file is not what the results draw

Plain SVG written here rather than a plotting library: the chart is a few
dozen rectangles, and the output must be byte-for-byte reproducible so the
test suite can check that the committed chart matches the committed results.
"""
import json
import os
import sys
from xml.sax.saxutils import escape

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
CHART = os.path.join(HERE, "..", "..", "docs", "benchmarks.svg")
SCENARIOS = ["tcp", "tls", "warm", "http", "redis"]

WIDTH, LABEL_WIDTH, BAR_HEIGHT, ROW, CASE_GAP = 900, 290, 14, 18, 30
SCALE_MAX = 1.5  # ratios above this are drawn clipped, with their value written
BAR_SPACE = WIDTH - LABEL_WIDTH - 170
COLOURS = {"direct": "#9e9e9e", "attache": "#1f6fb4", "haproxy": "#f28e2b", "nginx": "#59a14f",
           "stunnel": "#b07aa1", "twemproxy": "#e15759"}


def colour(target):
    first_word = target.split()[0].lower()
    return COLOURS.get(first_word, "#76b7b2")


def load():
    cases = []
    for scenario in SCENARIOS:
        path = os.path.join(RESULTS, f"{scenario}.json")
        if os.path.exists(path):
            with open(path) as f:
                cases += json.load(f)["cases"]
    return cases


def draw(cases):
    height = 100 + sum(CASE_GAP + ROW * len(case["values"]) for case in cases)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
           f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{WIDTH}" height="{height}" fill="#ffffff"/>',
           '<text x="10" y="22" font-size="15" font-weight="bold">attache vs a direct connection and peers '
           '(higher is better; direct = 1.00x)</text>',
           '<text x="10" y="40" fill="#555555">medians of the runs in results/*.json; load on CPU 0, '
           'proxies and servers on CPU 1; see docs/benchmarks.md for the method</text>']
    one = LABEL_WIDTH + BAR_SPACE / SCALE_MAX
    y = 60
    bottom = height - 36
    # The 1.00x line goes first, so bars and their values are drawn over it.
    out.append(f'<line x1="{one:.1f}" y1="{y + 10}" x2="{one:.1f}" y2="{bottom}" stroke="#bbbbbb" '
               f'stroke-dasharray="4 3"/>')
    out.append(f'<text x="{one:.1f}" y="{bottom + 16}" text-anchor="middle" fill="#333333">1.00x = direct</text>')
    for case in cases:
        baseline = case["values"][case["baseline"]]
        y += CASE_GAP
        out.append(f'<text x="10" y="{y - 8}" font-weight="bold">{escape(case["case"])}</text>')
        for target, value in case["values"].items():
            ratio = value / baseline
            width = BAR_SPACE * min(ratio, SCALE_MAX) / SCALE_MAX
            out.append(f'<text x="{LABEL_WIDTH - 8}" y="{y + BAR_HEIGHT - 3}" text-anchor="end">'
                       f'{escape(target)}</text>')
            out.append(f'<rect x="{LABEL_WIDTH}" y="{y}" width="{width:.1f}" height="{BAR_HEIGHT}" '
                       f'fill="{colour(target)}"/>')
            out.append(f'<text x="{LABEL_WIDTH + width + 6:.1f}" y="{y + BAR_HEIGHT - 3}">'
                       f'{ratio:.2f}x ({value:,.0f} {escape(case["unit"])})</text>')
            y += ROW
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    svg = draw(load())
    if "--check" in sys.argv[1:]:
        with open(CHART) as f:
            if f.read() != svg:
                sys.exit(f"{os.path.relpath(CHART)} is not what {os.path.relpath(RESULTS)} draws: "
                         f"run integration/bench/chart.py")
        return
    with open(CHART, "w") as f:
        f.write(svg)
    print(f"wrote {os.path.relpath(CHART)}")


if __name__ == "__main__":
    main()
