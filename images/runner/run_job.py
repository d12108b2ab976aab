"""The job's own process: checks its requirements, imports main.py, calls main() and sends the outcome
to the supervisor over an inherited pipe, which the job's prints cannot reach.

Usage (by supervise.py only): run_job.py CODE_DIR RESULT_FD MAX_RESULT_BYTES
"""

import importlib.metadata
import importlib.util
import json
import os
import re
import sys
import traceback

from crucible_result import ResultError, to_json_text

EXIT_CODES = {"success": 0, "exception": 1, "invalid_job": 2}
MAX_TRACEBACK_CHARS = 64 * 1024
RUNNER_FILES = {os.path.realpath(__file__), os.path.realpath(importlib.util.find_spec("crucible_result").origin)}


class InvalidJob(Exception):
    """The job cannot be run as given (no main.py, no main(), requirements the image lacks)."""


def check_requirements(path):
    """Every requirement must be satisfied, by the image or the environment built from them: jobs run offline."""
    from packaging.requirements import InvalidRequirement, Requirement

    problems = []
    with open(path, encoding="utf-8") as source:
        # Continued lines are one requirement; --hash pins were checked when the environment was built.
        logical = source.read().replace("\\\n", " ").splitlines()
        for number, raw in enumerate(logical, start=1):
            line = re.split(r"\s+--hash[=\s]", raw.split(" #", 1)[0])[0].strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("-"):
                problems.append(f"line {number} ({line}): options are not supported; jobs run offline")
                continue
            try:
                requirement = Requirement(line)
            except InvalidRequirement as error:
                problems.append(f"line {number} ({line}): not a valid requirement ({error})")
                continue
            if requirement.marker is not None and not requirement.marker.evaluate():
                continue
            if requirement.url:
                problems.append(f"{requirement.name}: installing from {requirement.url} needs a network")
                continue
            try:
                installed = importlib.metadata.version(requirement.name)
            except importlib.metadata.PackageNotFoundError:
                problems.append(f"{requirement.name} is not installed in this image")
                continue
            if not requirement.specifier.contains(installed, prereleases=True):
                problems.append(f"{requirement.name}{requirement.specifier} is wanted, {installed} is installed")
    if problems:
        image = os.environ.get("CRUCIBLE_IMAGE", "this image")
        raise InvalidJob(
            f"requirements.txt cannot be satisfied by {image}: " + "; ".join(problems)
            + " (pick an image family that has them, e.g. ml-cpu for torch)"
        )


def load_main(code_dir):
    path = os.path.join(code_dir, "main.py")
    if not os.path.isfile(path):
        found = ", ".join(sorted(os.listdir(code_dir))[:10]) or "nothing"
        raise InvalidJob(f"the job's code has no main.py at its top level (found: {found})")
    sys.path.insert(0, code_dir)
    spec = importlib.util.spec_from_file_location("main", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["main"] = module
    spec.loader.exec_module(module)
    entry = getattr(module, "main", None)
    if not callable(entry):
        raise InvalidJob("main.py defines no main() function; the job contract is a main() returning JSON")
    return entry


def error_of(exception):
    """Type, message and the traceback of the job's frames (the runner's own are left out)."""
    summary = traceback.TracebackException.from_exception(exception)
    summary.stack = traceback.StackSummary.from_list(
        [frame for frame in summary.stack if os.path.realpath(frame.filename) not in RUNNER_FILES]
    )
    text = "".join(summary.format())
    if len(text) > MAX_TRACEBACK_CHARS:
        text = "...\n" + text[-MAX_TRACEBACK_CHARS:]
    return {"type": type(exception).__qualname__, "message": str(exception), "traceback": text}


class Exit(Exception):
    """The job called sys.exit(code): it ends with the exit status it asked for."""

    def __init__(self, status):
        super().__init__(status)
        self.status = status


def exit_status(done):
    """The exit status Python itself would give `raise SystemExit(code)`."""
    if done.code is None:
        return 0
    if isinstance(done.code, int):
        return done.code & 0xFF
    print(done.code, file=sys.stderr)
    return 1


def outcome(code_dir, max_result_bytes):
    try:
        requirements = os.path.join(code_dir, "requirements.txt")
        if os.path.isfile(requirements):
            check_requirements(requirements)
        entry = load_main(code_dir)
    except InvalidJob as error:
        return {"status": "error", "reason": "invalid_job", "error": {"type": "InvalidJob", "message": str(error)}}
    except SystemExit as done:
        return exited(done)
    except BaseException as error:  # noqa: BLE001 - whatever main.py raises on import is the job's error
        return {"status": "error", "reason": "exception", "error": error_of(error)}
    try:
        value = entry()
    except SystemExit as done:
        return exited(done)
    except BaseException as error:  # noqa: BLE001 - KeyboardInterrupt is the job's too
        return {"status": "error", "reason": "exception", "error": error_of(error)}
    try:
        text = to_json_text(value, max_result_bytes)
    except ResultError as error:
        return {
            "status": "error",
            "reason": "exception",
            "error": {"type": "ResultNotSerializable", "message": str(error)},
        }
    return {"status": "success", "result": json.loads(text)}


def exited(done):
    """sys.exit(0) is a success without a value; any other status is the job's exit code, with no verdict."""
    status = exit_status(done)
    if status == 0:
        return {"status": "success", "result": None}
    raise Exit(status)


def main(argv):
    code_dir, result_fd, max_result_bytes = argv[1], int(argv[2]), int(argv[3])
    # The job's own subprocesses must not inherit the channel.
    os.set_inheritable(result_fd, False)
    try:
        result = outcome(code_dir, max_result_bytes)
    except Exit as done:
        # No message: the supervisor reports the exit status itself, measured, as the job's exit code.
        sys.stdout.flush()
        sys.stderr.flush()
        os.close(result_fd)
        return done.status
    sys.stdout.flush()
    sys.stderr.flush()
    with os.fdopen(result_fd, "w", encoding="utf-8") as channel:
        # One line: the supervisor stops reading at the newline, whoever else holds the pipe open.
        channel.write(json.dumps(result) + "\n")
    return EXIT_CODES[result.get("reason", "success")]


if __name__ == "__main__":
    sys.exit(main(sys.argv))
