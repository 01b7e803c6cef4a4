"""The ``tpmap`` command. With no subcommand it serves the app (like ``tpmap serve``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

from tpmap.auth import ROLES
from tpmap.model import CONDITIONS, KINDS, LAYERS, SEXES, TECHNIQUES, VIEWS

if TYPE_CHECKING:
    from tpmap.auth import Secret
    from tpmap.store import AuditEntry, Store

__all__ = ["main"]

DB_HELP = (
    "database URL (SQLAlchemy form, e.g. sqlite:///tpmap.db or "
    "postgresql+psycopg://user@host/db); default: $TPMAP_DATABASE_URL, else a SQLite file "
    "in your user data directory"
)

SECRET_HELP = (
    "file holding the server secret that keys the audit trail (default: $TPMAP_SECRET, else "
    "the one in tpmap's data directory): the same secret as the server's"
)


def _db(args: argparse.Namespace) -> str | None:
    return args.db or os.environ.get("TPMAP_DATABASE_URL") or None


def _secret(args: argparse.Namespace) -> Secret:
    from tpmap.auth import load_secret

    return load_secret(secret_file=getattr(args, "secret_file", None))


def _open(args: argparse.Namespace) -> Store:
    """The store for ``--db``, keyed with the server secret (``--secret-file``/TPMAP_SECRET)."""
    from tpmap.store import open_store

    return open_store(_db(args), secret=_secret(args))


def _cli_user() -> str:
    """Who a command-line change is recorded under: ``cli:<login name>``."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no login name in some containers
        return "cli"


def _show(value: object) -> str:
    """Text for the terminal: control and invisible characters escaped, never interpreted."""
    text = "" if value is None else str(value)
    return "".join(c if c.isprintable() or c == " " else f"\\u{ord(c):04x}" for c in text)


def _fail(message: object) -> int:
    print(f"tpmap: {_show(message)}", file=sys.stderr)
    return 1


def _refused(command: str, exc: Exception) -> int:
    """Say why a command changed nothing (each field's message), exit status 1."""
    from tpmap.model import ValidationError

    messages = exc.errors.values() if isinstance(exc, ValidationError) else [str(exc)]
    for message in messages:
        print(f"tpmap {command}: {_show(message)}", file=sys.stderr)
    return 1


def cmd_serve(args: argparse.Namespace) -> int:
    import datetime as dt

    from tpmap.server import ServerConfigError, Settings, resolve_secret, run

    if not 0 < args.idle_hours <= 24 * 30:
        return _fail("--idle-hours is between 0 and 720")
    settings = Settings(
        database_url=_db(args),
        host=args.host,
        port=args.port,
        allowed_origins=tuple(args.allow_origin or ()),
        secret_file=args.secret_file,
        idle_timeout=dt.timedelta(hours=args.idle_hours),
        behind_proxy=args.behind_proxy,
    )
    try:
        secret = resolve_secret(settings)
    except ServerConfigError as exc:
        print(f"tpmap serve: {exc}", file=sys.stderr)
        return 2
    store = None
    if args.demo:
        store = _ensure_demo(settings.database_url, seed=args.seed, secret=secret)
    try:
        run(settings, store=store, secret=secret)
    except ServerConfigError as exc:
        print(f"tpmap serve: {exc}", file=sys.stderr)
        return 2
    return 0


def _ensure_demo(url: str | None, *, seed: int, secret: Secret | None = None) -> Store:
    """Open the store; fill it with the demo cohort when it holds no patients yet."""
    from tpmap.demo import create_demo_accounts, demo_accounts_text
    from tpmap.store import open_store

    store = open_store(url, secret=secret)
    if store.counts()["patients"] == 0:
        from tpmap.demo import generate_demo

        print("No patients in the database yet: building the demo cohort ...", flush=True)
        summary = generate_demo(store, seed=seed)
        print(f"Demo cohort ready: {summary}", flush=True)
    else:
        n = store.counts()["patients"]
        print(f"Using the existing database ({n} patients).", flush=True)
    create_demo_accounts(store)
    if {u.name for u in store.list_users()} >= {"anna", "rosa"}:
        print(demo_accounts_text(), flush=True)
        if not store.find_patients("DEMO-", limit=1, scope=store.principal("anna")):
            print(
                "This demo database predates clinics (its patients are in 'Default clinic'), "
                "so the demo clinicians see none of them: delete it to build a new one.",
                flush=True,
            )
    return store


def cmd_demo(args: argparse.Namespace) -> int:
    from tpmap.demo import create_demo_accounts, demo_accounts_text, generate_demo

    store = _open(args)
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
    if create_demo_accounts(store):
        print(demo_accounts_text())
    return 0


def _read_password(args: argparse.Namespace) -> str:
    """A new password: from stdin (--password-stdin or a pipe), else asked twice unechoed."""
    import getpass

    if args.password_stdin or not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Password again: ") != first:
        raise ValueError("The two passwords differ: nothing was changed")
    return first


def cmd_user(args: argparse.Namespace) -> int:
    from tpmap.store import NotFoundError

    try:
        store = _open(args)
        if args.action == "list":
            users = store.list_users()
            if not users:
                print("No accounts yet: create the first with tpmap user add NAME --role admin")
                return 0
            rows = [
                (
                    u.name,
                    ", ".join(u.roles),
                    ", ".join(u.clinics) or "-",
                    "active" if u.active else "disabled",
                    u.created_at.strftime("%Y-%m-%d"),
                )
                for u in users
            ]
            _table(("name", "roles", "clinics", "status", "created"), rows)
            return 0
        if args.action == "add":
            password = _read_password(args)
            account = store.add_user(
                args.name,
                password,
                roles=args.role or (),
                clinics=args.clinic or (),
                user=_cli_user(),
            )
            where = f" at {', '.join(account.clinics)}" if account.clinics else ""
            print(f"Added {_show(account.name)} ({', '.join(account.roles)}{where}).")
        elif args.action in ("disable", "enable"):
            account = store.set_user_active(args.name, args.action == "enable", user=_cli_user())
            state = "enabled" if account.active else "disabled (signed out everywhere)"
            print(f"{_show(account.name)} is {state}.")
        elif args.action == "passwd":
            store.get_user(args.name)
            store.set_password(args.name, _read_password(args), user=_cli_user())
            print(f"New password set for {_show(args.name)}; their open sign-ins ended.")
    except (NotFoundError, ValueError) as exc:
        return _refused("user", exc)
    return 0


def cmd_clinic(args: argparse.Namespace) -> int:
    try:
        store = _open(args)
        if args.action == "add":
            clinic = store.add_clinic(args.name, user=_cli_user())
            print(f"Added clinic {_show(clinic.name)} (id {clinic.id}).")
        else:
            _table(
                ("id", "name", "created"),
                [(c.id, c.name, c.created_at.strftime("%Y-%m-%d")) for c in store.list_clinics()],
            )
    except ValueError as exc:
        return _refused("clinic", exc)
    return 0


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    shown = [[_show(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in shown)]) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    for row in shown:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _csv_cell(value: object) -> object:
    # A cell starting with = + - @ would run as a formula in a spreadsheet.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def cmd_audit(args: argparse.Namespace) -> int:
    import csv
    import datetime as dt
    import json

    from tpmap.store import AuditKeyError

    try:
        store = _open(args)
        if args.action == "verify":
            report = store.verify_audit()
            if report.ok:
                print(f"The audit trail is intact: {report.rows} rows, chain verified.")
                return 0
            print(f"tpmap audit verify: {_show(report.problem)}", file=sys.stderr)
            return 1
        dates = {}
        for name in ("date_from", "date_to"):
            value = getattr(args, name)
            if value:
                try:
                    dates[name] = dt.date.fromisoformat(value)
                except ValueError:
                    return _fail(f"{value!r} is not a date such as 2026-03-15")
        entries = store.audit_entries(
            user=args.user,
            patient=args.patient,
            action=args.action_filter,
            limit=args.limit,
            **dates,
        )
    except (AuditKeyError, ValueError) as exc:
        return _fail(exc)
    fields = ("seq", "at", "actor", "action", "entity", "entity_id", "patient_id", "clinic_id")
    if args.csv:
        writer = csv.writer(sys.stdout)
        writer.writerow([*fields, "target", "address", "before", "after"])
        for e in entries:
            writer.writerow(
                _csv_cell(v)
                for v in (
                    *(getattr(e, f) for f in fields),
                    e.target,
                    e.address,
                    None if e.before is None else json.dumps(e.before, sort_keys=True),
                    None if e.after is None else json.dumps(e.after, sort_keys=True),
                )
            )
        return 0
    if not entries:
        print("No audit entries match.")
        return 0

    def details(e: AuditEntry) -> str:
        parts = []
        if e.target:
            parts.append(e.target)
        if e.address:
            parts.append(f"from {e.address}")
        if e.after:
            parts.append(json.dumps(e.after, sort_keys=True)[:80])
        return " ".join(parts)

    _table(
        ("seq", "when (UTC)", "who", "action", "what", "patient", "details"),
        [
            (
                e.seq,
                e.at.strftime("%Y-%m-%d %H:%M:%S"),
                e.actor,
                e.action,
                f"{e.entity} {e.entity_id}" if e.entity_id is not None else e.entity,
                e.patient_id if e.patient_id is not None else "",
                details(e),
            )
            for e in entries
        ],
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from tpmap.report import ReportError, write_report
    from tpmap.store import NotFoundError

    try:
        store = _open(args)
        out = write_report(store, args.session, args.out, user=_cli_user())
    except NotFoundError:
        return _fail(f"no session with id {args.session}")
    except (ReportError, ValueError) as exc:
        return _fail(exc)
    print(f"wrote {out}")
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
    from tpmap.store import default_database_url

    # A figure for others to see: the researcher's disclosure policy, whatever is asked.
    policy = research.DisclosurePolicy.for_role("researcher")
    k = policy.k(args.min_patients)
    if args.min_patients is not None and args.min_patients < k:
        print(f"tpmap heatmap: k cannot be below {k}: using {k}.", file=sys.stderr)
    atlas = load_atlas()
    # The same database every other command opens without --db: the default one.
    url = _db(args) or default_database_url()
    try:
        data = research.load_dataset(url, snapshot=args.snapshot_dir)
    except ValueError as exc:
        print(f"tpmap heatmap: {exc}", file=sys.stderr)
        return 1
    # The server's perturbation key for this database: the same figure gets the same noise.
    shared = research.SharedDataset(url, snapshot=args.snapshot_dir)
    noise = shared.cell_key
    shared.close()
    filters = policy.coarsen(
        research.Filters(
            conditions=args.condition or None,
            sexes=args.sex or None,
            techniques=args.technique or None,
            muscles=atlas.ids_of_kind(*args.kind) if args.kind else None,
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
        help="serve the web app (sign-in, clinician page /annotate, researcher page /explore)",
        description="Serve tpmap's pages with a Bokeh server.",
    )
    serve.add_argument("--db", help=DB_HELP)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=5006, help="port (0 picks a free one)")
    serve.add_argument(
        "--secret-file",
        help="file holding the server secret (default: $TPMAP_SECRET, else one generated in "
        "tpmap's data directory; a non-loopback --host needs one of the first two)",
    )
    serve.add_argument(
        "--allow-origin",
        action="append",
        metavar="HOST[:PORT]",
        help="also accept the websocket from pages served as this host (e.g. the public name "
        "behind a proxy); repeat for several; never a wildcard",
    )
    serve.add_argument(
        "--idle-hours",
        type=float,
        default=8.0,
        help="sign a user out after this many hours without activity (default 8)",
    )
    serve.add_argument(
        "--behind-proxy",
        action="store_true",
        help="behind a TLS-terminating proxy: trust X-Forwarded-* and mark cookies Secure",
    )
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
    demo.add_argument("--secret-file", help=SECRET_HELP)
    demo.set_defaults(func=cmd_demo)

    user = sub.add_parser(
        "user",
        help="add, list, disable or re-password accounts",
        description=(
            "Manage who can sign in. Roles: clinician (records and sees the patients of their "
            "clinics), researcher (/explore and exports only), admin (manages accounts). "
            "Passwords are asked without echo, or read from standard input."
        ),
    )
    user_sub = user.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = user_sub.add_parser("add", help="create an account")
    add.add_argument("name")
    add.add_argument("--role", action="append", choices=ROLES, required=True, help="repeatable")
    add.add_argument("--clinic", action="append", help="clinic name (repeatable)")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    user_sub.add_parser("list", help="list accounts")
    for action, text in (
        ("disable", "disable an account (signed out everywhere at once)"),
        ("enable", "enable a disabled account"),
    ):
        user_sub.add_parser(action, help=text).add_argument("name")
    passwd = user_sub.add_parser("passwd", help="set a new password")
    passwd.add_argument("name")
    passwd.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin"
    )
    for p in user_sub.choices.values():
        p.add_argument("--db", help=DB_HELP)
        p.add_argument("--secret-file", help=SECRET_HELP)
        p.set_defaults(func=cmd_user, password_stdin=False)

    clinic = sub.add_parser("clinic", help="add or list clinics")
    clinic_sub = clinic.add_subparsers(dest="action", metavar="ACTION", required=True)
    clinic_sub.add_parser("add", help="create a clinic").add_argument("name")
    clinic_sub.add_parser("list", help="list clinics")
    for p in clinic_sub.choices.values():
        p.add_argument("--db", help=DB_HELP)
        p.add_argument("--secret-file", help=SECRET_HELP)
        p.set_defaults(func=cmd_clinic)

    audit = sub.add_parser(
        "audit",
        help="list the audit trail, or verify its hash chain",
        description=(
            "Every change, sign-in, account change and export, with who, when and the values "
            "before and after. 'tpmap audit verify' checks the tamper-evident hash chain."
        ),
    )
    audit.add_argument("action", nargs="?", choices=("list", "verify"), default="list")
    audit.add_argument("--db", help=DB_HELP)
    audit.add_argument("--secret-file", help=SECRET_HELP)
    audit.add_argument("--user", help="only this person's entries")
    audit.add_argument("--patient", help="only entries about this patient code")
    audit.add_argument(
        "--action", dest="action_filter", help="only this action (create, sign_in, export ...)"
    )
    audit.add_argument("--from", dest="date_from", help="from this date (YYYY-MM-DD, UTC)")
    audit.add_argument("--to", dest="date_to", help="up to this date, inclusive")
    audit.add_argument("--limit", type=int, help="only the newest N entries")
    audit.add_argument("--csv", action="store_true", help="CSV on standard output")
    audit.set_defaults(func=cmd_audit)

    report = sub.add_parser(
        "report",
        help="write a session report for the patient's chart (.html or .pdf)",
        description=(
            "A one- or two-page document of one session: patient code, episode, date and "
            "clinician; the diagram with the needled points numbered; every detail of each "
            "point (STRICTA); NPRS, pressure pain thresholds and adverse events. HTML always; "
            "PDF through Debian's Chromium."
        ),
    )
    report.add_argument("--session", type=int, required=True, help="the session's id")
    report.add_argument("--out", type=Path, required=True, help="output file: .html or .pdf")
    report.add_argument("--db", help=DB_HELP)
    report.add_argument("--secret-file", help=SECRET_HELP)
    report.set_defaults(func=cmd_report)

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
    heat.add_argument("--layer", default="superficial", choices=LAYERS, help="diagram layer")
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
    heat.add_argument(
        "--kind",
        action="append",
        choices=KINDS,
        help="only marks on structures of this kind (muscle, ligament, tendon, periosteum, "
        "fascia); repeat for several",
    )
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
    subparsers = parser._subparsers
    assert subparsers is not None  # build_parser adds the sub-commands
    # argparse types an action's choices loosely; the sub-commands' is a dict by name.
    commands = cast("dict[str, argparse.ArgumentParser]", subparsers._group_actions[0].choices)
    if not argv or (argv[0] not in commands and argv[0] not in ("-h", "--help")):
        argv = ["serve", *argv]  # like datasette: the default is to serve
    args = parser.parse_args(argv)
    from tpmap.store import AuditKeyError

    try:
        return int(args.func(args) or 0)
    except AuditKeyError as exc:
        # A message for the operator (which secret to use), not a traceback.
        return _fail(exc)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
