#!/usr/bin/env python3
"""Draw the benchmark results as SVG charts (no plotting library needed).

Usage::

    python3 benchmarks/chart.py RESULTS.json OUTPUT_DIR

``RESULTS.json`` is what ``benchmarks/run --json`` writes. Two charts are
written: ``benchmarks-scale.svg`` (endpoint ping p99 and memory against the
number of connected agents, with the 100 ms target) and
``benchmarks-ratios.svg`` (each throughput comparison as a ratio against
its baseline, with its target).
"""

import json
import os
import sys
from xml.sax.saxutils import escape

WIDTH, HEIGHT = 640, 320
LEFT, RIGHT, TOP, BOTTOM = 70, 70, 40, 50


def _svg(title, body):
    return ('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
            'font-family="sans-serif" font-size="12">\n'
            '<rect width="100%%" height="100%%" fill="white"/>\n'
            '<text x="%d" y="22" font-size="14" font-weight="bold">%s'
            '</text>\n%s</svg>\n' % (WIDTH, HEIGHT, LEFT, title, body))


def _axes(x_label, y_label, y2_label=None):
    plot_w = WIDTH - LEFT - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM
    parts = ['<rect x="%d" y="%d" width="%d" height="%d" fill="none" '
             'stroke="#444"/>' % (LEFT, TOP, plot_w, plot_h),
             '<text x="%d" y="%d" text-anchor="middle">%s</text>'
             % (LEFT + plot_w / 2, HEIGHT - 12, x_label),
             '<text transform="translate(18,%d) rotate(-90)" '
             'text-anchor="middle" fill="#1f5fbf">%s</text>'
             % (TOP + plot_h / 2, y_label)]
    if y2_label:
        parts.append('<text transform="translate(%d,%d) rotate(90)" '
                     'text-anchor="middle" fill="#b35900">%s</text>'
                     % (WIDTH - 18, TOP + plot_h / 2, y2_label))
    return parts, plot_w, plot_h


def scale_chart(scale):
    levels = scale["levels"]
    agents = [level["agents"] for level in levels]
    p99 = [level["p99_ms"] for level in levels]
    rss = [level["endpoint_rss_mib"] for level in levels]
    parts, plot_w, plot_h = _axes("connected agents",
                                  "ping p99 (ms)", "endpoint RSS (MiB)")
    x_max = max(agents) * 1.05
    y_max = max(max(p99) * 1.2, 10.0)
    target = 100.0
    y_max = max(y_max, target * 1.1) if max(p99) > target / 4 else y_max
    r_max = max(rss) * 1.2

    def x(value):
        return LEFT + plot_w * value / x_max

    def y(value, top):
        return TOP + plot_h - plot_h * value / top

    for tick in agents:
        parts.append('<text x="%.1f" y="%d" text-anchor="middle">%s</text>'
                     % (x(tick), TOP + plot_h + 16, format(tick, ",")))
    for fraction in (0, 0.25, 0.5, 0.75, 1.0):
        parts.append('<text x="%d" y="%.1f" text-anchor="end" '
                     'fill="#1f5fbf">%.1f</text>'
                     % (LEFT - 6, y(y_max * fraction, y_max) + 4,
                        y_max * fraction))
        parts.append('<text x="%d" y="%.1f" fill="#b35900">%.0f</text>'
                     % (WIDTH - RIGHT + 6, y(r_max * fraction, r_max) + 4,
                        r_max * fraction))
    if target <= y_max:
        level = y(target, y_max)
        parts.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" '
                     'stroke="#c00" stroke-dasharray="5,4"/>'
                     '<text x="%d" y="%.1f" fill="#c00">'
                     'target: p99 &lt; 100 ms</text>'
                     % (LEFT, LEFT + plot_w, level, level, LEFT + 6,
                        level - 4))
    else:
        parts.append('<text x="%d" y="%d" fill="#c00">target: p99 &lt; 100 ms '
                     '(far above this scale)</text>' % (LEFT + 6, TOP + 14))
    for values, top, colour in ((p99, y_max, "#1f5fbf"),
                                (rss, r_max, "#b35900")):
        points = " ".join("%.1f,%.1f" % (x(a), y(v, top))
                          for a, v in zip(agents, values))
        parts.append('<polyline points="%s" fill="none" stroke="%s" '
                     'stroke-width="2"/>' % (points, colour))
        for a, v in zip(agents, values):
            parts.append('<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>'
                         % (x(a), y(v, top), colour))
    return _svg("One endpoint process: ping p99 and memory by agents held",
                "\n".join(parts))


def ratio_rows(results):
    rows = []
    erase = results.get("erase") or {}
    if "ratio" in erase:
        rows.append(("overwrite erase vs dd", erase["ratio"], 0.95))
    image = results.get("image_write") or {}
    for kind, label, target in (("raw", "raw image vs curl | dd", 0.90),
                                ("zstd", "zstd image vs curl | zstd | dd",
                                 None),
                                ("qcow2", "qcow2 image vs curl; qemu-img",
                                 None)):
        if "ratio" in (image.get(kind) or {}):
            rows.append((label, image[kind]["ratio"], target))
    return rows


def ratio_chart(results):
    rows = ratio_rows(results)
    parts, plot_w, plot_h = _axes("baseline time / our time (higher is "
                                  "better; 1.0 = as fast as the baseline)",
                                  "")
    x_max = max([2.0] + [ratio * 1.15 for _, ratio, _ in rows])
    bar_h = plot_h / max(len(rows), 1) * 0.6
    for index, (label, ratio, target) in enumerate(rows):
        top = TOP + plot_h * (index + 0.2) / max(len(rows), 1)
        width = plot_w * ratio / x_max
        colour = "#2e8b57" if target is None or ratio >= target else "#c00"
        parts.append('<rect x="%d" y="%.1f" width="%.1f" height="%.1f" '
                     'fill="%s"/>' % (LEFT, top, width, bar_h, colour))
        parts.append('<text x="%.1f" y="%.1f">%s: %.2f%s</text>'
                     % (LEFT + 6, top + bar_h / 2 + 4, escape(label), ratio,
                        "" if target is None else " (target %.2f)" % target))
    one = LEFT + plot_w / x_max
    parts.append('<line x1="%.1f" x2="%.1f" y1="%d" y2="%d" stroke="#444" '
                 'stroke-dasharray="3,3"/>' % (one, one, TOP, TOP + plot_h))
    return _svg("Disk work against the command-line baseline, same device",
                "\n".join(parts))


def main(argv):
    if len(argv) != 3:
        print(__doc__)
        return 2
    with open(argv[1]) as stream:
        results = json.load(stream)["results"]
    os.makedirs(argv[2], exist_ok=True)
    written = []
    if results.get("scale", {}).get("levels"):
        path = os.path.join(argv[2], "benchmarks-scale.svg")
        with open(path, "w") as stream:
            stream.write(scale_chart(results["scale"]))
        written.append(path)
    if ratio_rows(results):
        path = os.path.join(argv[2], "benchmarks-ratios.svg")
        with open(path, "w") as stream:
            stream.write(ratio_chart(results))
        written.append(path)
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
