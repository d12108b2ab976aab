"""The entrypoint of every job image: unpacks the job's code, runs it in a child interpreter, forwards
stop signals to it (so it can checkpoint), and records the outcome in runner.json for the launcher.

The launcher trusts only what the engine measures (exit code, OOM, timeout, duration); this file adds
what only the inside knows: main()'s return value or exception, and the job's resource use.
"""

import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import threading

from crucible_archive import ArchiveError, extract

CODE_ZIP = "/crucible/input/code.zip"
OUTPUT_DIR = "/crucible/output"
RESULT_NAME = "runner.json"
SCRATCH = "/tmp"
CODE_DIR = "/tmp/crucible/code"
RUN_JOB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "run_job.py")
# Mirrors the launcher's MAX_RUNNER_RESULT_BYTES, less room for the envelope around the result.
MAX_RESULT_BYTES = 16 * 1024 * 1024 - 64 * 1024
MAX_CODE_FILES = 10_000
MAX_CODE_BYTES = 1024 * 1024 * 1024
# How long the message may trail the child's exit (it is written before, so this is only scheduling).
READ_GRACE_SECONDS = 5
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


def clear_result():
    """Removes whatever the job left at runner.json (a forged file, a link, a directory)."""
    path = os.path.join(OUTPUT_DIR, RESULT_NAME)
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def write_result(payload):
    """Writes runner.json atomically, never through a link the job may have planted."""
    temporary = os.path.join(OUTPUT_DIR, f".{RESULT_NAME}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(payload, out)
    os.replace(temporary, os.path.join(OUTPUT_DIR, RESULT_NAME))


def code_space():
    """What the code may expand to: the archive limit, or less when /tmp (a sized tmpfs) has less free."""
    stats = os.statvfs(SCRATCH)
    return min(MAX_CODE_BYTES, stats.f_bavail * stats.f_frsize)


def read_message(fd, limit, into):
    """Reads one newline-terminated message: not until EOF, since processes the job forked hold the pipe."""
    received = b""
    with os.fdopen(fd, "rb", buffering=0) as channel:
        while len(received) <= limit and b"\n" not in received:
            chunk = channel.read(64 * 1024)
            if not chunk:
                break
            received += chunk
    into.append(received.split(b"\n", 1)[0])


def run_child():
    """Runs the job; returns (exit status as a shell reports it, the child's message or None)."""
    read_fd, write_fd = os.pipe()
    child = subprocess.Popen(
        [sys.executable, "-B", RUN_JOB, CODE_DIR, str(write_fd), str(MAX_RESULT_BYTES)],
        pass_fds=(write_fd,),
        # As if run with `python main.py` in its own directory: relative paths find the job's files.
        cwd=CODE_DIR,
    )
    os.close(write_fd)
    for number in FORWARDED:
        signal.signal(number, lambda received, _frame: child.send_signal(received))
    # Read while the child runs: a result bigger than the pipe's buffer would otherwise block it.
    message = []
    reader = threading.Thread(
        target=read_message, args=(read_fd, MAX_RESULT_BYTES + 64 * 1024, message), daemon=True
    )
    reader.start()
    returncode = child.wait()
    reader.join(timeout=READ_GRACE_SECONDS)
    status = 128 - returncode if returncode < 0 else returncode
    return status, (message[0] if message else b"")


def outcome_of(status, message):
    if status > 128:
        # Killed by a signal (SIGKILL at the deadline, the OOM killer, SIGTERM it did not handle): the
        # launcher knows why from the engine; anything said here would only be a guess.
        return None
    if not message and status != 0:
        # It exited on its own before main() returned (os._exit, a crash in native code): the exit code,
        # which the launcher reads from the engine, is the whole story.
        return None
    if not message:
        return {
            "status": "error",
            "reason": "exception",
            "error": {
                "type": "NoResult",
                "message": "the job's process exited with code 0 before main() returned a result",
            },
        }
    try:
        return json.loads(message)
    except ValueError:
        return {
            "status": "error",
            "reason": "exception",
            "error": {"type": "ResultNotSerializable", "message": "the job's result could not be read back"},
        }


def main():
    python = platform.python_version()
    try:
        extract(CODE_ZIP, CODE_DIR, code_space(), MAX_CODE_FILES)
    except ArchiveError as error:
        write_result(
            {"status": "error", "reason": "invalid_job", "error": {"type": "InvalidArchive", "message": str(error)}, "python": python}
        )
        print(f"crucible: invalid job: {error}", file=sys.stderr)
        return 2
    status, message = run_child()
    clear_result()
    outcome = outcome_of(status, message)
    if outcome is not None:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        outcome["python"] = python
        outcome["resources"] = {
            "peakMemoryBytes": usage.ru_maxrss * 1024,
            "cpuSeconds": round(usage.ru_utime + usage.ru_stime, 3),
        }
        write_result(outcome)
    return status


if __name__ == "__main__":
    sys.exit(main())
