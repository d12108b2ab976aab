#!/bin/sh
# Installs the Debian package $1 without the dependencies named after it: for a package whose optional
# extension links a large library tree jobs do not use (torchvision's video reader and FFmpeg's codecs).
# Its other dependencies come from apt as usual. dpkg records it as installed with those dependencies
# unmet, which only a package manager minds, and the final images have none.
set -eu
package=${1:?usage: install-without.sh PACKAGE DEPENDENCY...}
shift
work=$(mktemp -d)
cd "$work"
apt-get download "$package"
deb=$(ls "$work"/*.deb)
# "a (>= 1) | b, c:any" -> "a c": the first alternative of each, without versions or architectures.
depends=$(dpkg-deb --field "$deb" Depends | tr ',' '\n' | sed -e 's/|.*//' -e 's/(.*)//' -e 's/:any//' -e 's/ //g')
wanted=""
for dependency in $depends; do
  case " $* " in
    *" $dependency "*) ;;
    *) wanted="$wanted $dependency" ;;
  esac
done
# shellcheck disable=SC2086 # one word a package
apt-get install -y --no-install-recommends $wanted
dpkg --ignore-depends="$(echo "$*" | tr ' ' ',')" --install "$deb"
cd / && rm -rf "$work"
echo "install-without: $package without $*" >&2
