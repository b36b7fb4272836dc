#!/usr/bin/env python3
"""One Markdown table from two benchmark JSON files (`babelrl bench --json` and
`scripts/bench_pytorch.py --json`): each figure of the first beside the figure of the same name in the
second, and their ratio. Plain Python, no packages.

    python3 scripts/bench_table.py babelrl.json peer.json
"""
import json
import sys


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: bench_table.py BABELRL.json PEER.json")
    docs = []
    for path in sys.argv[1:]:
        try:
            with open(path) as f:
                docs.append(json.load(f))
        except (OSError, ValueError) as e:
            sys.exit("bench_table: cannot read %s: %s" % (path, e))
    ours, peer = docs
    label = lambda m: "%s on %s" % (m.get("engine", "?"), m.get("adapter", "?"))
    print("model: %s (babelrl) / %s (peer)\n" % (ours["meta"].get("model"), peer["meta"].get("model")))
    print("| measurement | %s | %s | babelrl ÷ peer |" % (label(ours["meta"]), label(peer["meta"])))
    print("|---|---|---|---|")
    names = list(ours["figures"]) + [n for n in peer["figures"] if n not in ours["figures"]]
    for name in names:
        a, b = ours["figures"].get(name), peer["figures"].get(name)
        cell = lambda v: "—" if v is None else ("%.1f" % v if abs(v) >= 10 else "%.3g" % v)
        ratio = "%.2f×" % (a / b) if a is not None and b else "—"
        print("| %s | %s | %s | %s |" % (name, cell(a), cell(b), ratio))


if __name__ == "__main__":
    main()
