"""The ``tpmap`` command. With no subcommand it serves the app (like ``tpmap serve``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from tpmap.model import CONDITIONS, SEXES, TECHNIQUES, VIEWS

__all__ = ["main"]

DB_HELP = (
    "database URL (SQLAlchemy form, e.g. sqlite:///tpmap.db or "
    "postgresql+psycopg://user@host/db); default: $TPMAP_DATABASE_URL, else a SQLite file "
    "in your user data directory"
)


def _db(args: argparse.Namespace) -> str | None:
    return args.db or os.environ.get("TPMAP_DATABASE_URL") or None


def cmd_serve(args: argparse.Namespace) -> int:
    from tpmap.server import Settings, run

    settings = Settings(
        database_url=_db(args), host=args.host, port=args.port, user=args.user or "clinician"
    )
    store = None
    if args.demo:
        store = _ensure_demo(settings.database_url, seed=args.seed)
    run(settings, store=store)
    return 0


def _ensure_demo(url: str | None, *, seed: int):
    """Open the store; fill it with the demo cohort when it holds no patients yet."""
    from tpmap.store import open_store

    store = open_store(url)
    if store.counts()["patients"] == 0:
        from tpmap.demo import generate_demo

        print("No patients in the database yet: building the demo cohort ...", flush=True)
        summary = generate_demo(store, seed=seed)
        print(f"Demo cohort ready: {summary}", flush=True)
    else:
        n = store.counts()["patients"]
        print(f"Using the existing database ({n} patients).", flush=True)
    return store


def cmd_demo(args: argparse.Namespace) -> int:
    from tpmap.demo import generate_demo
    from tpmap.store import open_store

    store = open_store(_db(args))
    if store.counts()["patients"] and not args.force:
        print(
            "The database already holds patients; use --force to add the demo cohort anyway.",
            file=sys.stderr,
        )
        return 1
    summary = generate_demo(
        store, seed=args.seed, patients=args.patients, marks_per_session=args.marks_per_session
    )
    print(f"Demo cohort written: {summary}")
    return 0


def cmd_atlas(args: argparse.Namespace) -> int:
    if args.build:
        from tpmap._atlas_build import write_atlas

        out = write_atlas()
        print(f"wrote {out}")
        if not args.out:
            return 0
    if not args.out:
        print("tpmap atlas: give --out FILE (.html, .png or .svg) or --build", file=sys.stderr)
        return 2
    from tpmap.atlas import load_atlas
    from tpmap.plotting import atlas_overview, export

    load_atlas.cache_clear()
    out = export(atlas_overview(load_atlas(), height=args.height), args.out, title="tpmap atlas")
    print(f"wrote {out}")
    return 0


def cmd_heatmap(args: argparse.Namespace) -> int:
    from tpmap import research
    from tpmap.atlas import load_atlas
    from tpmap.plotting import density_map, export, muscle_map

    # A figure for others to see: the researcher's disclosure policy, whatever is asked.
    policy = research.DisclosurePolicy.for_role("researcher")
    k = policy.k(args.min_patients)
    if args.min_patients is not None and args.min_patients < k:
        print(f"tpmap heatmap: k cannot be below {k}: using {k}.", file=sys.stderr)
    atlas = load_atlas()
    try:
        data = research.load_dataset(_db(args), snapshot=args.snapshot_dir)
    except ValueError as exc:
        print(f"tpmap heatmap: {exc}", file=sys.stderr)
        return 1
    # The server's perturbation key for this database: the same figure gets the same noise.
    shared = research.SharedDataset(_db(args), snapshot=args.snapshot_dir)
    noise = shared.cell_key
    shared.close()
    filters = policy.coarsen(
        research.Filters(
            conditions=args.condition or None,
            sexes=args.sex or None,
            techniques=args.technique or None,
            date_from=args.date_from,
            date_to=args.date_to,
        )
    )
    if data.n_patients == 0:
        print("No patients match these filters: nothing to draw.", file=sys.stderr)
        return 1
    check = research.check_query(
        filters,
        data.cohort,
        data.marks,
        sessions=data.sessions,
        k=k,
        fold=args.fold,
        date_step=policy.date_step,
    )
    if check.refused:
        print(f"tpmap heatmap: {check.refused}", file=sys.stderr)
        return 1
    cohort, marks = data.filter(filters)
    if args.fold:
        cohort, marks = research.fold_to_affected_side(cohort, marks)
    n = noise.count(cohort["patient_id"].to_numpy(), floor=k)
    in_view = marks.loc[((marks["view"] == args.view) & (marks["layer"] == args.layer)).to_numpy()]
    what = ", ".join(args.condition) if args.condition else "all conditions"
    title = f"{args.view.replace('_', ' ').capitalize()}: {what} (n = {n})"
    if args.mode == "density":
        grid = research.density_grid(
            in_view,
            args.view,
            bounds=atlas.bounds(args.view),
            mask=atlas.outline(args.view),
            weighting=args.weighting,
            min_patients=k,
            dominance=policy.dominance,
            perturbation=noise,
        )
        fig = density_map(
            atlas, args.view, grid, n_cohort=n, layer=args.layer, toolbar=False, title=title
        )
    else:
        table = research.muscle_table(marks, cohort, min_patients=k, perturbation=noise)
        hidden = check.hidden_cells
        keep = [(m, s) not in hidden for m, s in zip(table["muscle"], table["side"], strict=True)]
        fig = muscle_map(
            atlas,
            args.view,
            table.loc[keep],
            layer=args.layer,
            toolbar=False,
            colour_title=f"% of {n} patients with a mark",
            title=title,
        )
    out = export(fig, args.out, title="tpmap heatmap")
    print(f"wrote {out} (about {n} patients, k = {k})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``tpmap`` command."""
    parser = argparse.ArgumentParser(
        prog="tpmap",
        description=(
            "Map dry-needled trigger points on a leg-and-hip body diagram. "
            "Without a subcommand, tpmap serves the app."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="serve the web app (clinician page /annotate, diagram /atlas)",
        description="Serve tpmap's pages with a Bokeh server.",
    )
    serve.add_argument("--db", help=DB_HELP)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=5006, help="port (0 picks a free one)")
    serve.add_argument("--user", help="name recorded with each mark (default: clinician)")
    serve.add_argument(
        "--demo",
        action="store_true",
        help="fill an empty database with the synthetic demo cohort first",
    )
    serve.add_argument("--seed", type=int, default=1, help="demo cohort seed (with --demo)")
    serve.set_defaults(func=cmd_serve)

    demo = sub.add_parser(
        "demo",
        help="write a synthetic demo cohort into the database",
        description="Generate a realistic synthetic cohort from a seed.",
    )
    demo.add_argument("--db", help=DB_HELP)
    demo.add_argument("--seed", type=int, default=1, help="random seed (same seed, same cohort)")
    demo.add_argument("--patients", type=int, default=200, help="number of patients")
    demo.add_argument(
        "--marks-per-session", type=float, default=None, help="mean marks per session"
    )
    demo.add_argument("--force", action="store_true", help="add to a non-empty database")
    demo.set_defaults(func=cmd_demo)

    atlas = sub.add_parser(
        "atlas",
        help="render the body diagram to a file, or rebuild its geometry",
        description=(
            "Render the four views with muscle names (HTML always; PNG and SVG through "
            "Bokeh's export with Debian's Chromium), or rebuild assets/atlas.json from "
            "assets/atlas_source.toml with --build."
        ),
    )
    atlas.add_argument("--out", type=Path, help="output file: .html, .png or .svg")
    atlas.add_argument("--height", type=int, default=820, help="figure height in pixels")
    atlas.add_argument(
        "--build", action="store_true", help="rebuild the geometry from its source first"
    )
    atlas.set_defaults(func=cmd_atlas)

    heat = sub.add_parser(
        "heatmap",
        help="draw a research heatmap to a file (for figures in batch)",
        description=(
            "Draw where patients were needled, across the cohort, as a figure: .png and .svg "
            "through Bokeh's export with Debian's Chromium, or .html. The researcher's "
            "disclosure rules apply (docs/privacy.md): muscles and spots backed by fewer than "
            "k patients are not shown, k is never below 5, dates are whole months, a filter "
            "that differs from a wider one by a few patients is refused, and counts carry "
            "consistent noise."
        ),
    )
    heat.add_argument("--db", help=DB_HELP)
    heat.add_argument("--view", default="posterior", choices=VIEWS, help="diagram view")
    heat.add_argument("--layer", default="superficial", choices=("superficial", "deep"))
    heat.add_argument(
        "--mode",
        default="density",
        choices=("density", "muscles"),
        help="density map, or per-muscle percentage of patients",
    )
    heat.add_argument(
        "--weighting",
        default="patients",
        choices=("patients", "patient_normalised", "marks"),
        help="density: share of patients with a mark within 1.5 cm (default), each patient's "
        "marks summing to one (smoothed), or every mark (smoothed)",
    )
    heat.add_argument("--condition", action="append", choices=CONDITIONS, help="repeat for several")
    heat.add_argument("--sex", action="append", choices=SEXES)
    heat.add_argument("--technique", action="append", choices=TECHNIQUES)
    heat.add_argument("--from", dest="date_from", help="first month (YYYY-MM-DD; whole months)")
    heat.add_argument("--to", dest="date_to", help="last month (YYYY-MM-DD; whole months)")
    heat.add_argument(
        "--fold",
        action="store_true",
        help="mirror marks so every affected knee is on the right (bilateral episodes left out)",
    )
    heat.add_argument(
        "--min-patients", type=int, default=None, help="small-cell threshold k (at least 5)"
    )
    heat.add_argument(
        "--snapshot-dir",
        help="where to keep the research snapshot (default $TPMAP_SNAPSHOT_DIR, else the "
        "user cache directory)",
    )
    heat.add_argument("--out", type=Path, required=True, help="output: .png, .svg or .html")
    heat.set_defaults(func=cmd_heatmap)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tpmap`` command line."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    if not argv or (argv[0] not in commands and argv[0] not in ("-h", "--help")):
        argv = ["serve", *argv]  # like datasette: the default is to serve
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
