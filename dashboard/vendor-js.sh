#!/usr/bin/env bash
# Re-vendors the browser libraries the dashboard serves itself (pages never load from a CDN):
# each one is fetched from the npm registry at its pinned version, checked against the registry's
# published integrity hash, and copied with its licence into dashboard/static/vendor/<name>-<version>/.
# The sourceMappingURL comment is dropped because the .map files are not vendored (a dangling
# reference would make browsers' dev tools and manifest storage ask for a missing file).
set -euo pipefail
cd "$(dirname "$0")"

# name version integrity file-in-package licence-in-package
PACKAGES=(
  "chart.js 4.6.1 sha512-hJyniucsFmq//EvXYvJ6c6mahPoI3kaxdjVH8awTaJ/fDNWeSqqqArixMJWkWNN6fcYvPU3HneSANFNYtRi61g== dist/chart.umd.min.js LICENSE.md"
  "livekit-client 2.23.0 sha512-j9Kg86nJjBjNFUD+ukp2jwMCGa0k+YD5gU//RzAM+ZY3pbG631QCte7fQjwqWMmtBzhDJL9nKYuOLMv/9IbAxg== dist/livekit-client.umd.js LICENSE"
)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for spec in "${PACKAGES[@]}"; do
  read -r name version integrity file licence <<<"$spec"
  tarball=$(cd "$work" && npm pack --silent "$name@$version")
  actual="sha512-$(openssl dgst -sha512 -binary "$work/$tarball" | base64 -w0)"
  if [ "$actual" != "$integrity" ]; then
    echo "FATAL: $name@$version does not match its pinned integrity ($actual)" >&2
    exit 1
  fi
  mkdir -p "$work/$name"
  tar xzf "$work/$tarball" -C "$work/$name"
  dest="static/vendor/$name-$version"
  rm -rf "$dest" && mkdir -p "$dest"
  grep -v '^//# sourceMappingURL=' "$work/$name/package/$file" >"$dest/$(basename "$file")"
  cp "$work/$name/package/$licence" "$dest/"
  echo "vendored $name@$version into dashboard/$dest"
done
