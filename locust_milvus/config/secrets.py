"""Secrets, in one place: the Milvus token, credentials in a URI, the OpenAI key.

They never appear in logs, reports, the web UI or the process title, and reach no network link but Milvus's and
the embedding provider's. How:
- a ``user:password`` in ``--host`` becomes the token (:func:`split_credentials`, :func:`hide_host_credentials`):
  Locust shows ``environment.host`` in its web UI and HTML report, and sends it to workers;
- URIs are printed without credentials (:func:`redact_uri`);
- every text we write or serve goes through the one scrubber (:func:`scrubber`), belt and braces over the
  redaction of the configuration;
- the process title is masked (:func:`mask_process_title`): every user of a host can read command lines;
- ``./.env`` is read before Locust parses its options (:func:`read_dotenv`), so secrets need not be on a command
  line at all.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Callable
from urllib.parse import unquote, urlsplit, urlunsplit

from dotenv import find_dotenv, load_dotenv

logger = logging.getLogger("locust_milvus")

REDACTED = "(redacted)"
# Shorter strings are not replaced: replacing "ab" everywhere would mangle the files (and the configuration shows
# no token whatever its length).
MIN_SECRET_LENGTH = 6


def redact_uri(uri: str) -> str:
    """The URI without any user:password part, for logs, reports and the web UI (also for a malformed URI)."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit((parts.scheme, "***@" + parts.netloc.rpartition("@")[2], parts.path, parts.query,
                       parts.fragment))


def split_credentials(uri: str) -> tuple[str, str]:
    """``(uri without user:password, "user:password")``: Milvus takes credentials as a token of that form.

    pymilvus would read them from the URI itself, but then the URI, which Locust shows in its web UI and HTML
    report and we print in logs, holds the password. Percent-escapes are decoded (a password with "@" or ":"
    must be written %40, %3A in a URI).
    """
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri, ""
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    token = unquote(user) + (":" + unquote(password) if password else "")
    return urlunsplit((parts.scheme, hostport, parts.path, parts.query, parts.fragment)), token


def hide_host_credentials(environment) -> None:
    """Take a user:password out of the host URI and make it the token.

    Locust shows ``environment.host`` in its web UI and its HTML report, and sends it to workers; a password in it
    would be shown there. pymilvus takes the same credentials as a ``user:password`` token, which is never shown.
    The host's credentials win over --milvus-token (as in settings_from), with a warning when they differ.
    """
    o = environment.parsed_options
    host = environment.host or (getattr(o, "host", None) if o is not None else None) or ""
    bare, token = split_credentials(host)
    if not token:
        return
    environment.host = bare
    if o is not None:
        o.host = bare
        if o.milvus_token and o.milvus_token != token:
            logger.warning("locust-milvus: --host holds credentials; they replace --milvus-token")
        o.milvus_token = token



def hide_host_credentials_at_test_start(environment, **_kwargs) -> None:
    """A test_start listener: a host typed into the web UI's form may hold credentials too."""
    hide_host_credentials(environment)


def scrubber(options) -> Callable[[str], str]:
    """:func:`scrubber_of` the token in Locust's parsed ``options``."""
    return scrubber_of(getattr(options, "milvus_token", ""))


def scrubber_of(token: str | None) -> Callable[[str], str]:
    """The one scrubber: a function that replaces the token and the OpenAI key (when set) in a text, also
    JSON-escaped, wherever they might have crept in (a host name, a collection name), for every report file and
    the web UI's JSON. Belt and braces over the redaction of the configuration."""
    values = [str(token or ""), os.environ.get("OPENAI_API_KEY", "")]
    values = [v for v in values if len(v) >= MIN_SECRET_LENGTH]
    pairs = [(v, REDACTED) for v in values] + [(json.dumps(v)[1:-1], REDACTED) for v in values]

    def scrub(text: str) -> str:
        for secret, masked in pairs:
            text = text.replace(secret, masked)
        return text

    return scrub


# Option names whose values are secrets: never written, whatever their value (also OPENAI_API_KEY, which is not an
# option).
_SECRET_NAME = re.compile(r"token|password|passwd|secret|api_?key|_key$|^key$", re.IGNORECASE)


def redacted_options(options: dict) -> dict:
    """Options for the record: secrets removed, URIs without credentials."""

    def clean(key: str, value):
        if _SECRET_NAME.search(key):
            return REDACTED if value else value
        if isinstance(value, str) and "://" in value:
            try:
                return redact_uri(value)
            except ValueError:  # not a URI after all (urlsplit refused it): keep nothing that might be one
                return REDACTED
        if isinstance(value, (list, tuple)):
            return [clean(key, v) for v in value]
        if isinstance(value, (str, int, float, bool)) or value is None:
            return value
        return str(value)

    return {key: clean(key, value) for key, value in sorted(options.items())}


_SECRET_FLAG = "--milvus-token"
_URI_CREDENTIALS = re.compile(r"(://)[^/@\s]*@")


def hidden_argv(argv: list[str]) -> list[str] | None:
    """``argv`` with the --milvus-token value and URI credentials masked, or None when there is nothing to hide."""
    shown, hide_next = [], False
    for arg in argv:
        name, eq, _ = arg.partition("=")
        if hide_next:
            shown.append("***")
        # argparse accepts an unambiguous prefix of an option (--milvus-tok); --milvus-t could be --milvus-timeout
        elif name.startswith("--milvus-tok") and _SECRET_FLAG.startswith(name):
            shown.append(f"{name}=***" if eq else arg)
        else:
            shown.append(_URI_CREDENTIALS.sub(r"\1***@", arg))
        hide_next = arg.startswith("--milvus-tok") and _SECRET_FLAG.startswith(arg)
    return shown if shown != argv else None


def mask_process_title() -> None:
    # Every user of the host sees a process's command line (ps, /proc/PID/cmdline). Overwrite ours as soon as our
    # code runs: Locust imports the locustfile before it parses the command line and before --processes forks, so
    # the workers inherit the masked title. Locust parses sys.argv, which setproctitle does not change.
    shown = hidden_argv(sys.orig_argv)  # the interpreter's own arguments too (python -m locust ...)
    if shown is None:
        return
    try:
        from setproctitle import setproctitle
    except ImportError:  # a dependency; without it, say so rather than fail
        logger.warning("locust-milvus: setproctitle is missing: the command line (with its secret) stays visible")
        return
    setproctitle(" ".join(shown))


def read_dotenv() -> None:
    """LOCUST_MILVUS_TOKEN (any LOCUST_* option) and OPENAI_API_KEY may live in ./.env. Locust parses options from
    the environment right after importing the locustfile, before any init listener, so the file is read at import
    (plugin.install); variables already set in the environment win."""
    load_dotenv(find_dotenv(usecwd=True), override=False)


# --- secrets stay home: nothing secret on the master-worker link -------------------------------------------------
# Locust sends the master's parsed options to every worker at each test start, over ZeroMQ in clear. Secret options
# (the token) are taken out of that message; each worker reads its own from its environment or ./.env. A keyed
# fingerprint travels instead, so that a worker with another token, or none, refuses at start with one line.
TOKEN_CHECK = "locust_milvus_token_check"
_FINGERPRINT_ROUNDS = 100_000  # PBKDF2: the fingerprint on the wire must not be a cheap way to test guesses


def fingerprint(token: str, salt: str) -> str | None:
    import hashlib

    if not token:
        return None
    return hashlib.pbkdf2_hmac("sha256", token.encode(), salt.encode(), _FINGERPRINT_ROUNDS).hex()[:32]


def keep_secrets_home(runner) -> None:
    """On a master: every message to a worker that carries the options carries no secret option, and carries the
    token's fingerprint (TOKEN_CHECK) instead. Wraps the master's RPC server's ``send_to_client``, the one way
    Locust sends a worker anything (locust/rpc/zmqrpc.py)."""
    import secrets as random_secrets

    server = runner.server
    send = server.send_to_client
    salt = random_secrets.token_hex(16)
    cache: dict[str, str | None] = {}

    def send_without_secrets(msg):
        data = msg.data
        if isinstance(data, dict) and isinstance(data.get("parsed_options"), dict):
            options = data["parsed_options"]
            token = str(options.get("milvus_token") or "")
            if token not in cache:
                cache.clear()
                cache[token] = fingerprint(token, salt)
            kept = {k: v for k, v in options.items() if not _SECRET_NAME.search(k)}
            kept[TOKEN_CHECK] = {"salt": salt, "digest": cache[token]}
            msg.data = {**data, "parsed_options": kept}
        return send(msg)

    server.send_to_client = send_without_secrets


def check_worker_token(environment) -> None:
    """On a worker at test start: its own token (from its environment or ./.env) must be the master's; raises
    ConfigError with one line when it is not."""
    from locust_milvus.config.settings import ConfigError

    options = environment.parsed_options
    check = getattr(options, TOKEN_CHECK, None)
    if not isinstance(check, dict):
        return  # a master that sends no fingerprint (not locust-milvus's wiring): nothing to compare
    own = str(getattr(options, "milvus_token", "") or "")
    expected = check.get("digest")
    if expected is None and not own:
        return
    if expected is not None and not own:
        raise ConfigError("this worker has no Milvus token, and the master has one (tokens never travel to "
                          "workers): set LOCUST_MILVUS_TOKEN (or ./.env) on every worker")
    if fingerprint(own, str(check.get("salt", ""))) != expected:
        raise ConfigError("this worker's Milvus token is not the master's (tokens never travel to workers): set the "
                          "same LOCUST_MILVUS_TOKEN (or ./.env) on every worker" if expected is not None else
                          "this worker has a Milvus token and the master has none: unset LOCUST_MILVUS_TOKEN here, "
                          "or give the master the same token")
