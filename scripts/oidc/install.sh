#!/usr/bin/env bash
# Installs panva's oidc-provider (an OpenID-certified OpenID Connect provider for Node.js) for Ferry's end-to-end
# SSO tests: npm puts it in target/oidc/node_modules (relative to the repository root), where
# scripts/oidc/provider.mjs loads it from. Needs the system `node` (tested with 20.20) and `npm`, which reaches the npm
# registry. Quick, and offline, when that version is already there.
#
#   scripts/oidc/install.sh           # last line printed: the install prefix (target/oidc)
#
# Environment: FERRY_OIDC_VERSION (default 9.13.3), FERRY_OIDC_PREFIX (default <repo>/target/oidc; provider.mjs
# reads the same place from OIDC_NODE_PREFIX).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VERSION=${FERRY_OIDC_VERSION:-9.13.3}
PREFIX=${FERRY_OIDC_PREFIX:-$ROOT/target/oidc}

log() { echo "oidc/install: $*" >&2; }
die() { echo "oidc/install: error: $*" >&2; exit 1; }

command -v node >/dev/null || die "no node on PATH"
command -v npm >/dev/null || die "no npm on PATH"

installed() {
    local manifest=$PREFIX/node_modules/oidc-provider/package.json
    [[ -f $manifest ]] &&
        [[ $(node -p 'require(process.argv[1]).version' "$manifest" 2>/dev/null) == "$VERSION" ]] &&
        [[ -f $PREFIX/node_modules/koa/package.json && -f $PREFIX/node_modules/jose/package.json ]]
}

if installed; then
    log "oidc-provider $VERSION already in $PREFIX"
else
    log "installing oidc-provider $VERSION into $PREFIX"
    mkdir -p "$PREFIX"
    npm install --prefix "$PREFIX" --no-audit --no-fund --no-update-notifier --save-exact \
        "oidc-provider@$VERSION" >&2 || die "npm install of oidc-provider@$VERSION failed"
    installed || die "oidc-provider $VERSION is still missing from $PREFIX after npm install"
    log "installed oidc-provider $VERSION"
fi
echo "$PREFIX"
