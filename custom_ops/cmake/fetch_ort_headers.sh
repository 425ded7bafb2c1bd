#!/usr/bin/env bash
# Downloads Debian trixie's libonnxruntime-dev (the ONNX Runtime 1.21 C/C++ API
# headers, about 85 KB) and unpacks it into DEST, so that DEST/usr/include/onnxruntime/
# holds onnxruntime_cxx_api.h. Used by cmake/ort_headers.cmake only when no headers
# are installed.
#
# apt-get runs with a private source list, package lists and cache under DEST, so
# the system's apt state is neither read for sources nor changed. The package's
# checksum is verified by apt against the signed index, as for any apt download.
#
# usage: fetch_ort_headers.sh DEST
set -euo pipefail

dest=${1:?usage: fetch_ort_headers.sh DEST}
package=libonnxruntime-dev
suite=trixie
mirror=http://deb.debian.org/debian

for tool in apt-get dpkg-deb; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "fetch_ort_headers: '$tool' is not available (this fallback needs a Debian-like system)" >&2
    exit 1
  fi
done

mkdir -p "$dest"
dest=$(cd "$dest" && pwd)
state="$dest/apt"
mkdir -p "$state/lists/partial" "$state/cache/archives/partial" "$state/download"

keyring=/usr/share/keyrings/debian-archive-keyring.gpg
if [ -r "$keyring" ]; then
  echo "deb [signed-by=$keyring] $mirror $suite main" >"$state/sources.list"
else
  echo "deb $mirror $suite main" >"$state/sources.list"
fi

apt_opts=(
  -o "Dir::Etc::SourceList=$state/sources.list"
  -o "Dir::Etc::SourceParts=/dev/null"
  -o "Dir::State::Lists=$state/lists"
  -o "Dir::Cache=$state/cache"
  -o "Debug::NoLocking=1"
  -o "APT::Sandbox::User=$(id -un)"
  -q
)

echo "fetch_ort_headers: apt-get update (private lists in $state)"
apt-get "${apt_opts[@]}" update
echo "fetch_ort_headers: apt-get download $package"
(cd "$state/download" && apt-get "${apt_opts[@]}" download "$package")

deb=$(ls "$state/download"/"$package"_*.deb | head -n 1)
if [ -z "$deb" ]; then
  echo "fetch_ort_headers: the download produced no .deb" >&2
  exit 1
fi
dpkg-deb -x "$deb" "$dest"
if [ ! -f "$dest/usr/include/onnxruntime/onnxruntime_cxx_api.h" ]; then
  echo "fetch_ort_headers: $deb has no usr/include/onnxruntime/onnxruntime_cxx_api.h" >&2
  exit 1
fi
echo "fetch_ort_headers: headers in $dest/usr/include/onnxruntime"
