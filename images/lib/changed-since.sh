#!/bin/sh
# Copies into $2 every file, link and directory of the root filesystem whose inode changed after the
# stamp file $1 was made: what a package installation added or modified, with its compiled bytecode
# (which dpkg does not list), the dpkg database and the linker cache.
set -eu
stamp=${1:?usage: changed-since.sh STAMP DEST}
dest=${2:?usage: changed-since.sh STAMP DEST}
mkdir -p "$dest"
find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /build -o -path "$dest" -o -path /tmp \
  -o -path /var/cache -o -path /var/lib/apt -o -path /var/log \) -prune -o \
  \( -type f -o -type l \) -cnewer "$stamp" -print >/build/changed.txt
tar -C / --no-recursion -cf - -T /build/changed.txt | tar -C "$dest" -xpf -
echo "changed-since: $(wc -l </build/changed.txt) files, $(du -sh "$dest" | cut -f1)" >&2
