#!/bin/sh
# Removes from the tree at $1 what jobs never need: documentation, caches, package test suites and, with
# --package-managers, apt and dpkg themselves (their database stays, so image scanners still see the
# installed packages). Shared by every job image so each family prunes the same way.
set -eu
root=${1:?usage: prune.sh ROOT [--package-managers]}
mode=${2:-}

rm -rf "$root"/usr/share/doc "$root"/usr/share/man "$root"/usr/share/info "$root"/usr/share/lintian \
  "$root"/usr/share/locale "$root"/var/cache/apt "$root"/var/lib/apt/lists "$root"/var/cache/debconf/*-old \
  "$root"/var/log/* "$root"/root/.cache "$root"/tmp/*
# The Unicode Character Database as text (39 MB, pulled in by fontTools): Python's unicodedata is
# compiled in, and nothing a job imports reads these files.
rm -rf "$root"/usr/share/unicode

# Test suites of Python packages (pandas' alone is ~70 MB); `testing` helpers such as numpy.testing stay,
# with the one file of numpy's tests that numpy.testing imports (and so scipy, and sklearn through it).
if [ -d "$root/usr/lib/python3/dist-packages" ]; then
  find "$root/usr/lib/python3/dist-packages" -depth -type d -name tests ! -path '*/numpy/_core/tests' \
    -exec rm -rf {} +
  if [ -d "$root/usr/lib/python3/dist-packages/numpy/_core/tests" ]; then
    find "$root/usr/lib/python3/dist-packages/numpy/_core/tests" -mindepth 1 -maxdepth 1 ! -name _natype.py \
      -exec rm -rf {} +
  fi
fi
# libtorch's C++ unit test programs (63 MB): python3-torch depends on libtorch-test, nothing runs them.
rm -rf "$root"/usr/lib/libtorch-test

if [ "$mode" = "--package-managers" ]; then
  rm -rf "$root"/usr/bin/apt* "$root"/usr/bin/dpkg* "$root"/usr/lib/apt "$root"/usr/lib/dpkg \
    "$root"/usr/share/apt "$root"/etc/apt "$root"/usr/bin/debconf* "$root"/usr/share/debconf \
    "$root"/usr/sbin/dpkg* "$root"/usr/bin/update-alternatives "$root"/usr/sbin/update-alternatives
fi
