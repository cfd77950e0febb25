#!/bin/sh
# The ledger tests run against a real PostgreSQL server that they start themselves (tests/pgserver.py). This puts
# the server binaries on a fresh Debian or Ubuntu machine: nothing where they are already there, and a stated
# skip of those tests (not a failure) where they cannot be installed (no apt, not root).
set -u
if command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing PostgreSQL's server binaries for the ledger tests (apt-get install postgresql)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql) \
        >/dev/null || echo "could not install postgresql: the PostgreSQL ledger tests will be skipped"
else
    echo "no PostgreSQL server binaries and no root apt-get: the PostgreSQL ledger tests will be skipped" \
         "(install Debian's postgresql package to run them)"
fi
exit 0
