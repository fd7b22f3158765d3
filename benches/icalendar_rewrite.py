#!/usr/bin/env python3
"""What an admin would otherwise write: parse each resource with the PyPI `icalendar` package,
rewrite ORGANIZER/ATTENDEE through a dict, serialise. Used by benches/migrate.rs as a baseline.

usage: icalendar_rewrite.py MAPPING.tsv FILE-LIST   (prints resources/s on the last line)
MAPPING.tsv: old address <TAB> new address, one per line (addresses lower-cased).
"""
import sys
import time

import icalendar


def main():
    mapping = {}
    with open(sys.argv[1], encoding="utf-8") as f:
        for line in f:
            old, new = line.rstrip("\n").split("\t")
            mapping[old] = new
    with open(sys.argv[2], encoding="utf-8") as f:
        paths = [p.rstrip("\n") for p in f]
    start = time.perf_counter()
    changed = 0
    for path in paths:
        with open(path, "rb") as f:
            cal = icalendar.Calendar.from_ical(f.read())
        hit = False
        for comp in cal.walk():
            for name in ("ORGANIZER", "ATTENDEE"):
                values = comp.get(name)
                if values is None:
                    continue
                many = isinstance(values, list)
                out = []
                for v in values if many else [values]:
                    new = mapping.get(str(v).lower())
                    if new is not None:
                        nv = icalendar.vCalAddress(new)
                        nv.params = v.params
                        v, hit = nv, True
                    out.append(v)
                comp[name] = out if many else out[0]
        if hit:
            changed += 1
        cal.to_ical()
    elapsed = time.perf_counter() - start
    print(f"{len(paths)} resources, {changed} changed, {elapsed:.3f} s, {len(paths) / elapsed:.0f} resources/s")


if __name__ == "__main__":
    main()
