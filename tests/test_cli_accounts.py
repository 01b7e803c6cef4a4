"""`tpmap user`, `tpmap clinic` and `tpmap audit` as an administrator uses them."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import stat
import subprocess
import sys

from sqlalchemy import text

from tpmap.auth import load_secret
from tpmap.store import Store

from conftest import TEST_SECRET


def tpmap(*args: str, stdin: str = "", env: dict[str, str] | None = None):
    return subprocess.run(
        [sys.executable, "-m", "tpmap", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_first_admin_clinics_users_and_their_trail(tmp_path):
    db = f"sqlite:///{tmp_path / 'clinic.db'}"
    listed = tpmap("user", "list", "--db", db)
    assert listed.returncode == 0 and "No accounts yet" in listed.stdout

    added = tpmap("user", "add", "adam", "--role", "admin", "--db", db, stdin="first password\n")
    assert added.returncode == 0 and "Added adam (admin)" in added.stdout
    assert tpmap("clinic", "add", "North clinic", "--db", db).returncode == 0
    added = tpmap(
        "user",
        "add",
        "anna",
        "--role",
        "clinician",
        "--clinic",
        "north clinic",
        "--password-stdin",
        "--db",
        db,
        stdin="anna's password\n",
    )
    assert added.returncode == 0 and "anna (clinician at North clinic)" in added.stdout
    listing = tpmap("user", "list", "--db", db).stdout
    assert "anna  clinician  North clinic  active" in listing

    # Wrong input gets a message, never a traceback.
    for args, stdin, message in (
        (("user", "add", "bob", "--role", "clinician"), "long enough pw\n", "at least one clinic"),
        (("user", "add", "bob", "--role", "admin"), "short\n", "at least 10 characters"),
        (("user", "add", "<b>bob</b>", "--role", "admin"), "long enough pw\n", "User name is"),
        (("user", "disable", "nobody"), "", "No account named nobody"),
        (("clinic", "add", "north CLINIC"), "", "already exists"),
        (("clinic", "add", "evil\x1b[31m"), "", "control or invalid character"),
    ):
        done = tpmap(*args, "--db", db, stdin=stdin)
        assert done.returncode == 1, args
        assert message in done.stderr and "Traceback" not in done.stderr, done.stderr

    assert tpmap("user", "passwd", "anna", "--db", db, stdin="a new password\n").returncode == 0
    assert tpmap("user", "disable", "anna", "--db", db).returncode == 0
    assert "anna  clinician  North clinic  disabled" in tpmap("user", "list", "--db", db).stdout
    with Store(db) as store:
        assert store.sign_in("adam", "first password").principal.is_admin

    trail = tpmap("audit", "--db", db).stdout
    assert re.search(r"cli:\S+\s+create\s+user 1", trail)
    assert re.search(r"cli:\S+\s+disable\s+user 2", trail)
    only = tpmap("audit", "--db", db, "--action", "password").stdout.splitlines()
    assert len(only) == 2 and "anna" in only[1]
    rows = list(csv.DictReader(io.StringIO(tpmap("audit", "--csv", "--db", db).stdout)))
    assert [r["action"] for r in rows] == [
        "create",
        "create",
        "create",
        "password",
        "disable",
        "sign_in",
    ]
    assert rows[3]["after"] == '{"password": "changed"}'
    assert "hash" not in rows[0]["after"] and "$argon2" not in "".join(map(str, rows))
    assert tpmap("audit", "verify", "--db", db).returncode == 0


def test_audit_output_cannot_drive_the_terminal_or_a_spreadsheet(tmp_path):
    db = f"sqlite:///{tmp_path / 'x.db'}"
    with Store(db) as store:
        # Names typed at the sign-in page are recorded as typed (escaped), whatever they hold.
        for typed in ("\x1b]0;owned\x07evil", '=HYPERLINK("http://x")'):
            with contextlib.suppress(ValueError):
                store.sign_in(typed, "whatever", address="10.0.0.1")
    table = tpmap("audit", "--db", db).stdout
    assert "\x1b" not in table and "\x07" not in table and "\\u001b" in table
    cells = [
        r["target"] for r in csv.DictReader(io.StringIO(tpmap("audit", "--csv", "--db", db).stdout))
    ]
    assert cells[1].startswith("'=")


def test_audit_verify_fails_naming_the_row_edited_with_sql(tmp_path):
    db = f"sqlite:///{tmp_path / 'x.db'}"
    with Store(db) as store:
        store.add_clinic("North", user="setup")
        store.add_clinic("South", user="setup")
        store.add_clinic("West", user="setup")
    assert "intact: 3 rows" in tpmap("audit", "verify", "--db", db).stdout
    with Store(db) as store, store.engine.begin() as conn:
        conn.execute(text('UPDATE audit_log SET after = \'{"name": "East"}\' WHERE seq = 2'))
    done = tpmap("audit", "verify", "--db", db)
    assert done.returncode == 1 and "Audit row 2" in done.stderr


def test_a_generated_secret_is_kept_private_and_reused(tmp_path):
    first = load_secret(env={}, data_dir=tmp_path)
    path = tmp_path / "secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not first.explicit and len(first.value) >= 32
    assert load_secret(env={}, data_dir=tmp_path).value == first.value
    explicit = load_secret(env={"TPMAP_SECRET": TEST_SECRET}, data_dir=tmp_path)
    assert explicit.explicit and explicit.value == TEST_SECRET.encode()
    path.chmod(0o644)
    try:
        load_secret(env={}, data_dir=tmp_path)
    except ValueError as exc:
        assert "readable by others" in str(exc)
    else:
        raise AssertionError("a world-readable secret file was accepted")
    short = tmp_path / "short"
    short.write_text("tooshort")
    try:
        load_secret(secret_file=short)
    except ValueError as exc:
        assert "too short" in str(exc)
    else:
        raise AssertionError("a short secret was accepted")


def test_the_cli_finds_the_generated_secret_in_the_data_directory(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TPMAP_SECRET"}
    env["XDG_DATA_HOME"] = str(tmp_path / "data")
    db = f"sqlite:///{tmp_path / 'x.db'}"
    assert tpmap("clinic", "add", "North", "--db", db, env=env).returncode == 0
    secret = tmp_path / "data" / "tpmap" / "secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert tpmap("audit", "verify", "--db", db, env=env).returncode == 0
    # Another secret (here the tests' own) is refused rather than starting a second chain.
    other = tpmap("clinic", "add", "South", "--db", db)
    assert other.returncode == 1 and "different secret" in other.stderr
