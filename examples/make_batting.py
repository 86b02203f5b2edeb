"""Writes ``batting.csv`` from the 2018 MLB batting table (openintro::mlb_players_18), for the worked example on real
data (docs/data-files.md#real-data-batting-averages).

Each player with at least 10 at-bats (702 of 1,270) becomes one row: x = asin(sqrt((H + 1/4) / (AB + 1/2))), the
variance-stabilised batting average (Anscombe), whose noise sd is about se = 1 / (2 sqrt(AB)) whatever the player's
true average, so x_i ~ N(u_i, se_i²) is many normal means with a known standard error per row (Brown 2008 used the
same transform on 2005 batting). The columns are ``player``, ``x``, ``se``, ``AB`` and ``H``.

Get the table from R (``write.csv(openintro::mlb_players_18, "mlb_players_18.csv")``) or openintro's site.

Usage: python examples/make_batting.py mlb_players_18.csv [--out batting.csv] [--min-at-bats 10]
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path


def batting_rows(source: Path, min_at_bats: int) -> list[tuple[str, float, float, int, int]]:
    """(player, x, se, AB, H) of every player with at least ``min_at_bats`` at-bats, in the file's order."""
    rows = []
    with open(source, newline="", encoding="utf-8") as handle:
        for record in csv.DictReader(handle):
            at_bats, hits = int(float(record["AB"])), int(float(record["H"]))
            if at_bats < min_at_bats:
                continue
            x = math.asin(math.sqrt((hits + 0.25) / (at_bats + 0.5)))
            player = " ".join(record["name"].replace(",", " ").split()) + f" ({record['team']})"
            rows.append((player, x, 1.0 / (2.0 * math.sqrt(at_bats)), at_bats, hits))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="mlb_players_18.csv (openintro)")
    parser.add_argument("--out", type=Path, default=Path("batting.csv"))
    parser.add_argument("--min-at-bats", type=int, default=10)
    args = parser.parse_args()
    rows = batting_rows(args.source, args.min_at_bats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as handle:
        handle.write("player,x,se,AB,H\n")
        for player, x, se, at_bats, hits in rows:
            handle.write(f"{player},{x:.6f},{se:.6f},{at_bats},{hits}\n")
    print(f"wrote {len(rows)} players with at least {args.min_at_bats} at-bats to {args.out} (columns player, x, se)")


if __name__ == "__main__":
    main()
