#!/bin/sh
# Installs tether: the binary, the systemd unit, a default configuration and the operations
# guide, under PREFIX (default /usr/local) inside DESTDIR (default: the running system).
#
#   deploy/install.sh                       # after cargo build --release; as root
#   DESTDIR=/tmp/pkg deploy/install.sh      # into a staging root, for a package
#   TETHER_BIN=path/to/tether deploy/install.sh
#
# What it writes (paths inside DESTDIR):
#   $PREFIX/bin/tether                       the binary (0755)
#   /etc/systemd/system/tether.service       the unit, pointed at $PREFIX/bin/tether (0644)
#   /etc/tether/tether.toml                  the configuration (0640), only if there is none:
#                                            an existing one is never overwritten
#   $PREFIX/share/doc/tether/running.md      the guide the unit's Documentation= names
#   $PREFIX/share/doc/tether/tether.example.toml   every key, commented
#
# Into the running system (no DESTDIR) as root, it also creates the system user and group
# `tether` when they are missing, gives the configuration to group `tether` (it holds the apps'
# secrets), and runs `systemctl daemon-reload`. It never starts or enables the service.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
UNITDIR=${UNITDIR:-/etc/systemd/system}
CONFDIR=${CONFDIR:-/etc/tether}

bin=${TETHER_BIN:-}
if [ -z "$bin" ]; then
    for candidate in "$root/target/release/tether" "${CARGO_TARGET_DIR:-/nonexistent}/release/tether"; do
        if [ -x "$candidate" ]; then bin=$candidate; break; fi
    done
fi
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
    echo "install.sh: no tether binary: run 'cargo build --release -p tether' or set TETHER_BIN" >&2
    exit 1
fi
case "$PREFIX" in
    /*) ;;
    *) echo "install.sh: PREFIX must be an absolute path, got '$PREFIX'" >&2; exit 1 ;;
esac

install -d -m 0755 "$DESTDIR$PREFIX/bin" "$DESTDIR$UNITDIR" "$DESTDIR$PREFIX/share/doc/tether"
install -d -m 0755 "$DESTDIR$CONFDIR"
install -m 0755 "$bin" "$DESTDIR$PREFIX/bin/tether"

# The unit names /usr/local and /etc/tether: point it at where things went.
sed -e "s|/usr/local/|$PREFIX/|g" -e "s|/etc/tether/|$CONFDIR/|g" \
    "$here/systemd/tether.service" >"$DESTDIR$UNITDIR/tether.service.tmp"
chmod 0644 "$DESTDIR$UNITDIR/tether.service.tmp"
mv "$DESTDIR$UNITDIR/tether.service.tmp" "$DESTDIR$UNITDIR/tether.service"

install -m 0644 "$root/docs/running.md" "$DESTDIR$PREFIX/share/doc/tether/running.md"
install -m 0644 "$root/docs/tether.example.toml" "$DESTDIR$PREFIX/share/doc/tether/tether.example.toml"

config="$DESTDIR$CONFDIR/tether.toml"
if [ -e "$config" ]; then
    echo "kept the existing $config"
else
    install -m 0640 "$here/tether.toml" "$config"
    echo "wrote $config: add your apps (every key: $PREFIX/share/doc/tether/tether.example.toml)"
fi

if [ -z "$DESTDIR" ] && [ "$(id -u)" = 0 ]; then
    if ! getent group tether >/dev/null; then
        groupadd --system tether
    fi
    if ! getent passwd tether >/dev/null; then
        useradd --system --gid tether --no-create-home --home-dir /var/lib/tether \
            --shell /usr/sbin/nologin --comment "tether push server" tether
    fi
    chgrp tether "$config"
    if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
        systemctl daemon-reload
    fi
    echo "installed; start it with: systemctl enable --now tether"
else
    echo "installed into ${DESTDIR:-/}; the service reads $CONFDIR/tether.toml as user tether:"
    echo "create that system user (or ship a sysusers.d entry) and chgrp the file to it"
fi
