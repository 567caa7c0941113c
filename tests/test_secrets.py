"""No secret reaches the database, in any form: a real analysis process whose command line and
final error are full of passwords and tokens, then the database's bytes (main file and WAL) are
searched for each one."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from oneprov import open_store
from oneprov.secrets import scrub, scrub_argv, scrub_params

# Each secret is unique text, so that finding it anywhere in the bytes means it leaked.
SECRETS = {
    "--pass": "Sx1pass", "-p": "Sx2short", "--pwd": "Sx3pwd", "--api-key": "Sx4apikey",
    "--apikey=": "Sx5apikeyeq", "--auth": "Sx6bearer", "--credentials=": "Sx7cred", "json": "Sx8json",
    "quoted": "Sx9 multi word", "url@": "Sx10p@ss", "--password": "Sx11password", "--token=": "Sx12token",
    "error-url-token": "Sx13urltoken", "error-header": "Sx14header", "error-db-url": "Sx15dburl",
    "error-json": "Sx16errjson", "error-basic": "Sx17basic",
}

ARGV = [
    "--pass", SECRETS["--pass"], "-p", SECRETS["-p"], "--pwd", SECRETS["--pwd"],
    "--api-key", SECRETS["--api-key"], f"--apikey={SECRETS['--apikey=']}",
    "--auth", f"Bearer {SECRETS['--auth']}", f"--credentials=user:{SECRETS['--credentials=']}",
    '{"password": "%s", "user": "me"}' % SECRETS["json"], "--password", SECRETS["quoted"],
    "--db", f"postgresql://me:{SECRETS['url@']}@db.lab.org/prov",
    f"--token={SECRETS['--token=']}", "--label", "fig1",
]

SCRIPT = textwrap.dedent("""
    import sys
    from oneprov import ONE
    one = ONE(cache_dir=sys.argv[1], db=sys.argv[2], project="secrets")
    one.search()
    raise RuntimeError(
        "GET https://alyx.example.org/datasets?token={error-url-token}&page=2 failed; "
        "headers {{'Authorization': 'Token {error-header}'}}; "
        "database postgresql+psycopg://lab:{error-db-url}@pg.example.org:5432/prov; "
        'body {{"password": "{error-json}"}}; Authorization: Basic {error-basic}')
""").format(**SECRETS)


def test_no_secret_reaches_the_database_bytes(tmp_path, repo):
    script = tmp_path / "analysis.py"
    script.write_text(SCRIPT)
    db = tmp_path / "p.sqlite"
    proc = subprocess.run([sys.executable, str(script), str(repo.root), str(db), *ARGV],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "RuntimeError" in proc.stderr
    store = open_store(db)
    run = store.sql("SELECT status, command, error FROM runs").iloc[0]
    assert run.status == "failed" and "RuntimeError" in run.error and "--label fig1" in run.command
    assert "analysis.py" in run.command and "alyx.example.org" in run.error    # the rest is kept
    store.close()
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("p.sqlite*"))
    assert len(list(tmp_path.glob("p.sqlite*"))) >= 1
    for where, secret in SECRETS.items():
        for form in {secret, secret.split()[0], secret.replace("@", "%40")}:
            assert form.encode() not in stored, f"{where}: {form!r} is in the database"


@pytest.mark.parametrize("text, secret", [
    ("postgresql://me:a@b@c@host/db", "a@b@c"),
    ("https://user:ghp_tok123@github.com/lab/repo.git", "ghp_tok123"),
    ("curl -H 'Authorization: Bearer eyJ0eXAi.abc.def' https://x", "eyJ0eXAi.abc.def"),
    ("X-Api: api_key=k9k9k9; other", "k9k9k9"),
    ("{'client_secret': 'cs1'}", "cs1"),
    ("--password 'two words'", "two words"),
    ("--passphrase=open-sesame", "open-sesame"),
])
def test_scrub_hides_each_form(text, secret):
    assert secret not in scrub(text) and "***" in scrub(text)


def test_scrub_keeps_ordinary_text():
    for text in ("imported 12 sessions and 80 datasets", "pass rate 90%", "passed=3", "page=2",
                 "alf/probe00/spikes.times.npy", "https://alyx.example.org/sessions/abc"):
        assert scrub(text) == text


def test_scrub_argv_and_params():
    assert scrub_argv(["a.py", "--password", "two words", "x"]) == "a.py --password '***' x"
    assert scrub_argv(["a.py", "--auth", "Bearer", "tok"]) == "a.py --auth '***' '***'"
    params = scrub_params({"url": "https://u:pw1@h/x", "token": "t0", "nested": [{"password": 1}], "n": 3})
    assert params == {"url": "https://u:***@h/x", "token": "***", "nested": [{"password": "***"}], "n": 3}
