"""Safe extraction of a job's code.zip: nothing may land outside the target directory, and an archive
may not expand past the space and file count it is allowed (zip bombs), whatever its headers claim."""

import errno
import os
import stat
import zipfile

CHUNK = 1024 * 1024
# The most a job's code may hold: the same limits as MAX_CODE_FILES and MAX_CODE_BYTES in
# runtime/src/code-source.ts, which refuses more at submit (test/runtime/code-source.test.ts checks they
# agree). `extract` never allows more than these, whatever its caller asks for.
MAX_CODE_FILES = 10_000
MAX_CODE_BYTES = 256 * 1024 * 1024
# An entry compressed better than this is a bomb, not code: source and data rarely pass 20:1.
MAX_RATIO = 200
MAX_LINK_BYTES = 4096


class ArchiveError(Exception):
    """The archive cannot be run as a job's code; the message says which entry and why."""


def extract(zip_path, dest, max_bytes, max_files):
    """Extracts `zip_path` into the new directory `dest`; returns (files, bytes) written. At most
    `max_bytes` and `max_files`, and never more than MAX_CODE_BYTES and MAX_CODE_FILES."""
    max_bytes = min(max_bytes, MAX_CODE_BYTES)
    max_files = min(max_files, MAX_CODE_FILES)
    if not os.path.isfile(zip_path):
        raise ArchiveError(f"the job's code archive {zip_path} is missing")
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as error:
        raise ArchiveError(f"the job's code is not a valid zip archive ({error})") from None
    with archive:
        entries = archive.infolist()
        if len(entries) > max_files:
            raise ArchiveError(f"code.zip holds {len(entries)} entries, more than the {max_files} allowed")
        declared = sum(entry.file_size for entry in entries)
        if declared > max_bytes:
            raise ArchiveError(f"code.zip expands to {declared} bytes, more than the {max_bytes} allowed")
        os.makedirs(dest)
        root = os.path.realpath(dest)
        written = 0
        for entry in entries:
            target = os.path.join(root, *_safe_parts(entry.filename))
            _check_inside(root, os.path.dirname(target), entry.filename)
            mode = entry.external_attr >> 16
            if stat.S_ISLNK(mode):
                _link(archive, entry, root, target)
            elif entry.is_dir():
                os.makedirs(target, exist_ok=True)
            else:
                _check_ratio(entry)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                written += _copy(archive, entry, target, max_bytes - written)
        return len(entries), written


def _safe_parts(name):
    if "\\" in name or "\0" in name:
        raise ArchiveError(f"code.zip entry {name!r} has a backslash or NUL in its name")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise ArchiveError(f"code.zip entry {name!r} is an absolute path; entries must be relative")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"code.zip entry {name!r} climbs out of the archive with '..'")
    if not parts:
        raise ArchiveError(f"code.zip has an entry with an empty name ({name!r})")
    return parts


def _check_inside(root, path, name):
    real = os.path.realpath(path)
    if real != root and not real.startswith(root + os.sep):
        raise ArchiveError(f"code.zip entry {name!r} would be written outside the code directory")


def _check_ratio(entry):
    if entry.file_size > CHUNK and entry.file_size > MAX_RATIO * max(entry.compress_size, 1):
        raise ArchiveError(
            f"code.zip entry {entry.filename!r} is compressed {entry.file_size // max(entry.compress_size, 1)}:1"
            f" (more than {MAX_RATIO}:1): it looks like a zip bomb"
        )


def _link(archive, entry, root, target):
    if entry.file_size > MAX_LINK_BYTES:
        raise ArchiveError(f"code.zip entry {entry.filename!r} is a link with an oversized target")
    link = archive.read(entry).decode("utf-8", "replace")
    resolved = os.path.normpath(os.path.join(os.path.dirname(target), link))
    if os.path.isabs(link) or (resolved != root and not resolved.startswith(root + os.sep)):
        raise ArchiveError(f"code.zip entry {entry.filename!r} links to {link!r}, outside the code directory")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.symlink(link, target)
    # A chain of links can still leave: judge where this one really ends up.
    _check_inside(root, target, entry.filename)


def _copy(archive, entry, target, allowed):
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    try:
        fd = os.open(target, flags, 0o644)
    except FileExistsError:
        raise ArchiveError(f"code.zip has entry {entry.filename!r} twice, or a link in its place") from None
    count = 0
    try:
        with os.fdopen(fd, "wb") as out, archive.open(entry) as source:
            while chunk := source.read(CHUNK):
                count += len(chunk)
                if count > entry.file_size or count > allowed:
                    raise ArchiveError(
                        f"code.zip entry {entry.filename!r} expands past what its header declares or the space"
                        " allowed: it looks like a zip bomb"
                    )
                out.write(chunk)
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise ArchiveError(
                f"code.zip does not fit in the job's /tmp ({error.strerror} at {entry.filename!r})"
            ) from None
        raise
    except (zipfile.BadZipFile, EOFError) as error:
        raise ArchiveError(f"code.zip entry {entry.filename!r} is corrupt ({error})") from None
    return count
