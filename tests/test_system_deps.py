"""`make test` on a fresh machine: tools/system-deps installs what the PostgreSQL, Spark and browser tests
need when it is missing (root, or passwordless sudo), else says in one line what to install (issue #18).

The script runs for real (bash) against a fake root (``SYSTEM_DEPS_ROOT``: where it looks for Chromium
and PostgreSQL's binaries) and a PATH of fake commands: ``id`` answers the uid we choose, ``sudo`` and
``apt-get`` record how they were called. So the machine this suite runs on (which has everything) does
not decide what is proven, and nothing is installed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "system-deps"
BASH = shutil.which("bash")


def fake_machine(tmp_path: Path, *, uid: int, sudo: bool, have: set[str], apt_fails: bool = False) -> dict:
    """A fake root and bin folder; ``have`` among {"postgresql", "java", "chromium"}."""
    root, bin_ = tmp_path / "root", tmp_path / "bin"
    bin_.mkdir()
    log = tmp_path / "calls.log"

    def command(name: str, body: str) -> None:
        path = bin_ / name
        path.write_text(f"#!{BASH}\n{body}\n")
        path.chmod(0o755)

    command("id", f'[ "$1" = "-u" ] && echo {uid}')
    command("mkdir", 'exec /bin/mkdir "$@"')
    command(
        "apt-get",
        f'echo "apt-get $*" >> {log}; ' + ('[ "$1" = update ] || exit 100' if apt_fails else "exit 0"),
    )
    if sudo:
        command(
            "sudo", f'echo "sudo $*" >> {log}; [ "$1" = -n ] && shift; [ "$1" = true ] && exit 0; exec "$@"'
        )
    if "java" in have:
        command("java", "exit 0")
    if "postgresql" in have:
        pg = root / "usr/lib/postgresql/16/bin"
        pg.mkdir(parents=True)
        (pg / "pg_ctl").write_text("")
    if "chromium" in have:
        (root / "usr/bin").mkdir(parents=True)
        (root / "usr/bin/chromium").write_text("")
        (root / "usr/bin/chromium").chmod(0o755)
    env = {"PATH": str(bin_), "SYSTEM_DEPS_ROOT": str(root), "HOME": str(tmp_path)}
    return {"env": env, "log": log}


def run(machine: dict) -> tuple[subprocess.CompletedProcess, list[str]]:
    done = subprocess.run([BASH, str(SCRIPT)], env=machine["env"], capture_output=True, text=True, timeout=60)
    calls = machine["log"].read_text().splitlines() if machine["log"].exists() else []
    return done, calls


def test_as_root_every_missing_package_is_installed_with_apt_get(tmp_path):
    done, calls = run(fake_machine(tmp_path, uid=0, sudo=False, have=set()))
    assert done.returncode == 0, done.stderr
    assert calls == [
        "apt-get update -q",
        "apt-get install -y -q --no-install-recommends postgresql default-jre-headless chromium",
    ]
    assert done.stdout.splitlines() == [
        "system-deps: installing postgresql default-jre-headless chromium (apt-get)",
        "system-deps: installed postgresql default-jre-headless chromium",
    ]
    assert (tmp_path / "root/usr/share/man/man1").is_dir()  # the JRE's postinst needs it on slim images


def test_only_chromium_missing_installs_only_chromium_through_passwordless_sudo(tmp_path):
    done, calls = run(fake_machine(tmp_path, uid=1000, sudo=True, have={"postgresql", "java"}))
    assert done.returncode == 0, done.stderr
    assert calls[0] == "sudo -n true"
    assert "sudo -n apt-get install -y -q --no-install-recommends chromium" in calls
    assert "apt-get install -y -q --no-install-recommends chromium" in calls


def test_without_root_or_sudo_one_line_says_what_to_install_and_the_suite_goes_on(tmp_path):
    done, calls = run(fake_machine(tmp_path, uid=1000, sudo=False, have={"java"}))
    assert done.returncode == 0 and calls == [] and done.stdout == ""
    assert done.stderr.splitlines() == [
        "system-deps: the PostgreSQL, Spark and browser tests need Debian packages that are missing; "
        "install them with: sudo apt-get install postgresql chromium"
    ]


def test_a_machine_with_everything_is_left_alone_and_silent(tmp_path):
    done, calls = run(fake_machine(tmp_path, uid=0, sudo=False, have={"postgresql", "java", "chromium"}))
    assert (done.returncode, done.stdout, done.stderr, calls) == (0, "", "", [])


def test_a_failed_install_stops_make_test_with_its_reason(tmp_path):
    done, _ = run(fake_machine(tmp_path, uid=0, sudo=False, have={"postgresql", "java"}, apt_fails=True))
    assert done.returncode == 1
    assert done.stderr.strip() == "system-deps: apt-get install chromium failed"


def test_make_test_runs_system_deps_before_pytest():
    makefile = (SCRIPT.parents[1] / "Makefile").read_text()
    assert "test: system-deps $(STAMP)" in makefile and "system-deps:\n\t@tools/system-deps" in makefile


# ---------------------------------------------- tools/python311: the interpreter .venv is made from


PICK = SCRIPT.parent / "python311"


def _pick(candidates: list[str]) -> str:
    env = {"PATH": "/usr/bin:/bin", "PYTHON311_CANDIDATES": " ".join(candidates)}
    out = subprocess.run([str(PICK)], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stderr == "", out
    return out.stdout.strip()


def test_the_venv_is_made_from_the_first_candidate_that_is_a_311_able_to_make_venvs(tmp_path):
    """A missing file, a program that is not Python 3.11, and a 3.11 without ``ensurepip`` (Debian's
    python3.11 before python3.11-venv is installed) are passed over; the first usable 3.11 is taken."""
    import os
    import shlex
    import sys

    def fake(name: str, body: str) -> str:
        path = tmp_path / name
        path.write_text(f"#!{BASH}\n{body}\n")
        path.chmod(0o755)
        return str(path)

    other_version = fake("python3.10", "exit 1")  # `-c ...` fails as a 3.10 would
    no_ensurepip = fake(
        "python3.11-bare", f"exec {shlex.quote(sys.executable)} -c 'import ensurepip_missing'"
    )
    # the suite's own interpreter (a 3.11 whose venv module works), by a link in tmp_path: the candidates are
    # space-separated, and a clone's path may hold a space
    real = str(tmp_path / "python3.11-real")
    os.symlink(os.path.realpath(sys.executable), real)
    assert _pick([str(tmp_path / "missing"), other_version, no_ensurepip, real]) == real
    none_usable = [str(tmp_path / "missing"), other_version, no_ensurepip]
    assert _pick(none_usable) == "python3.11"  # then the python3.11 on PATH, as before
    assert _pick([]) == "python3.11"


def test_make_creates_the_venv_from_the_picked_interpreter_unless_python_is_given():
    def venv_commands(*args: str) -> list[str]:
        out = subprocess.run(
            ["make", "-n", "-B", ".venv/bin/python", *args], cwd=SCRIPT.parents[1], capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        return [line for line in out.stdout.splitlines() if line.endswith(" -m venv .venv")]

    picked = subprocess.run([str(PICK)], capture_output=True, text=True, timeout=30).stdout.strip()
    assert venv_commands() == [f"{picked} -m venv .venv"]
    assert venv_commands("PYTHON=/opt/some/python3.11") == ["/opt/some/python3.11 -m venv .venv"]
