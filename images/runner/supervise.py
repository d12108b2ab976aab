"""The entrypoint of every job image: unpacks the job's code, runs it in a child interpreter, forwards
stop signals to it (so it can checkpoint), and records the outcome in runner.json for the launcher.

The launcher trusts only what the engine measures (exit code, OOM, timeout, duration); this file adds
what only the inside knows: main()'s return value or exception (the job's own word, sent over a pipe),
and the job's resource use, measured here by wait4() of the child, never reported by the job.

Two modes:
- `supervise.py --job-user UID:GID` (the Docker launcher on a root runtime): the container starts as
  uid 0 with only CAP_SETUID, CAP_SETGID and CAP_KILL (no-new-privileges). This process stays uid 0 and
  runs the job as UID:GID (setgroups([]), setgid, setuid), which leaves the job no capabilities. The job
  can then neither signal, ptrace nor read /proc/<pid>/{mem,environ} of this process or of the
  container's init (all uid 0), cannot write its code directory (root's, 0755/0644) nor runner.json
  (the output directory is root's, 0700, on the host). Staying uid 0 rather than a second unprivileged
  uid needs no extra user in the images and keeps the files the host's root runtime reads owned by root;
  with only those three capabilities (no DAC_OVERRIDE, CHOWN, FOWNER, SYS_PTRACE) it can read nothing of
  the job's 0700 workspace either.
- no arguments (a runtime that is not root, and Kubernetes pods, where the pod is the boundary between
  jobs): the job runs as this process's own uid, as before: it could trace or signal this process, so
  runner.json is only as trustworthy as the job; the code directory is made read-only, which the same
  uid could undo.
"""

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading

from crucible_archive import MAX_CODE_BYTES, MAX_CODE_FILES, ArchiveError, extract

CODE_ZIP = "/crucible/input/code.zip"
OUTPUT_DIR = "/crucible/output"
RESULT_NAME = "runner.json"
SCRATCH = "/tmp"
CODE_DIR = "/tmp/crucible/code"
RUN_JOB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "run_job.py")
# Mirrors the launcher's MAX_RUNNER_RESULT_BYTES, less room for the envelope around the result.
MAX_RESULT_BYTES = 16 * 1024 * 1024 - 64 * 1024
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


def parse_job_user(argv):
    """(uid, gid) from `--job-user UID:GID`, or None when the job runs as this process's uid."""
    if len(argv) == 0:
        return None
    if len(argv) != 2 or argv[0] != "--job-user":
        raise SystemExit(f"crucible: usage: supervise.py [--job-user UID:GID], got {argv!r}")
    uid, _, gid = argv[1].partition(":")
    if not (uid.isdigit() and gid.isdigit()) or int(uid) == 0 or int(gid) == 0:
        raise SystemExit(f"crucible: --job-user must be a non-root UID:GID, got {argv[1]!r}")
    if os.getuid() != 0:
        raise SystemExit(f"crucible: --job-user needs the supervisor to start as root, it runs as uid {os.getuid()}")
    return int(uid), int(gid)


def seal_code(job_user):
    """The job may read and run its code but not change it."""
    if job_user is not None:
        # Root's files, 0755/0644 (umask 022): another uid cannot write them, nor rename /tmp/crucible
        # (root's, in the sticky /tmp).
        return
    # The same uid as the job: read-only bits at least stop accidental writes; the job could undo them.
    for directory, _dirs, files in os.walk(CODE_DIR):
        for name in files:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                os.chmod(path, 0o444)
        os.chmod(directory, 0o555)
    os.chmod(os.path.dirname(CODE_DIR), 0o555)


def run_child(job_user):
    """Runs the job; returns (exit status as a shell reports it, the child's message, its rusage)."""
    read_fd, write_fd = os.pipe()
    drop = {} if job_user is None else {"user": job_user[0], "group": job_user[1], "extra_groups": []}
    child = subprocess.Popen(
        [sys.executable, "-B", RUN_JOB, CODE_DIR, str(write_fd), str(MAX_RESULT_BYTES)],
        pass_fds=(write_fd,),
        # As if run with `python main.py` in its own directory: relative paths find the job's files.
        cwd=CODE_DIR,
        **drop,
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
    # wait4, not the job's word: its CPU time and peak memory (with those of the children it waited for).
    _pid, wait_status, usage = os.wait4(child.pid, 0)
    returncode = os.waitstatus_to_exitcode(wait_status)
    child.returncode = returncode
    reader.join(timeout=READ_GRACE_SECONDS)
    status = 128 - returncode if returncode < 0 else returncode
    return status, (message[0] if message else b""), usage


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
    unreadable = {
        "status": "error",
        "reason": "exception",
        "error": {"type": "ResultNotSerializable", "message": "the job's result could not be read back"},
    }
    try:
        said = json.loads(message)
    except ValueError:
        return unreadable
    if not isinstance(said, dict):
        return unreadable
    # Only the job's own word: its verdict and result; what was measured is added here.
    return {key: said[key] for key in ("status", "reason", "result", "error") if key in said}


def main(argv=None):
    job_user = parse_job_user(sys.argv[1:] if argv is None else argv)
    os.umask(0o022)
    python = platform.python_version()
    try:
        extract(CODE_ZIP, CODE_DIR, code_space(), MAX_CODE_FILES)
    except ArchiveError as error:
        write_result(
            {"status": "error", "reason": "invalid_job", "error": {"type": "InvalidArchive", "message": str(error)}, "python": python}
        )
        print(f"crucible: invalid job: {error}", file=sys.stderr)
        return 2
    seal_code(job_user)
    status, message, usage = run_child(job_user)
    clear_result()
    # No verdict (killed, or exited without one): an error record without a reason, which the launcher
    # reads as "judge by the exit code"; it still carries what was measured here.
    outcome = outcome_of(status, message) or {"status": "error"}
    outcome["python"] = python
    outcome["resources"] = {
        "peakMemoryBytes": usage.ru_maxrss * 1024,
        "cpuSeconds": round(usage.ru_utime + usage.ru_stime, 3),
    }
    write_result(outcome)
    return status


if __name__ == "__main__":
    sys.exit(main())
