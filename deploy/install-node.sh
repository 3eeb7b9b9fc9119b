#!/bin/sh
# Installs Node.js into /usr/local from the official release tarball, checked against its SHA-256 before it is
# unpacked, and the npm that wrote package-lock.json. Both images run this one script, so the versions and the
# hashes live in one place.
#
# The hashes are those of the release's SHASUMS256.txt (https://nodejs.org/dist/v24.19.0/SHASUMS256.txt.asc),
# whose signature by the releaser's key in github.com/nodejs/release-keys was checked with gpg before they were
# written here. To move to another release: take its two linux lines from that file, after `gpg --verify`.
set -eu

NODE_VERSION=24.19.0
case "$(uname -m)" in
  x86_64) arch=x64 sha256=14b342e71204f811bde6153be8e04b62aef63c236fef92b55f9c83154b409647 ;;
  aarch64) arch=arm64 sha256=01443c1e1a29e531ccad5a46fefa6df490d2189c49f7955904aecdbb0fe86fdc ;;
  *) echo "install-node.sh: no Node.js ${NODE_VERSION} tarball is pinned for $(uname -m); add its SHA-256 here" >&2; exit 1 ;;
esac

tarball="node-v${NODE_VERSION}-linux-${arch}.tar.xz"
cd /tmp
curl --fail --silent --show-error --location --proto '=https' --tlsv1.2 -O "https://nodejs.org/dist/v${NODE_VERSION}/${tarball}"
echo "${sha256}  ${tarball}" | sha256sum --check --strict -
tar --extract --xz --file "${tarball}" --directory /usr/local --strip-components=1 --no-same-owner \
  --exclude=CHANGELOG.md --exclude=README.md --exclude='share/doc' --exclude='share/man'
rm "${tarball}"
node --version

# npm 11.19.1 honours package.json's allowScripts, so `npm ci` runs only the install scripts it allows (not
# koffi's: its binaries ship in the package). The npm inside this Node release may predate that.
npm install --global --no-audit --no-fund npm@11.19.1
