#!/usr/bin/env bash
# Nchan (nginx + libnginx-mod-nchan) for tether-bench, on loopback, with the config kept in
# bench/peers/nchan.conf, in its own prefix, pid and log directory (not the system nginx).
#
#   bench/peers/nchan.sh start|stop|pid|status
#
# Environment: NCHAN_PORT (default 7700), NCHAN_DIR (default /tmp/tether-bench-nchan).
# `start` installs the Debian packages first if they are missing, and prints the master's pid
# (its workers are its children: pass the master's pid to --server-pid).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

port=${NCHAN_PORT:-7700}
dir=${NCHAN_DIR:-/tmp/tether-bench-nchan}
pidfile=$dir/nginx.pid
module=/usr/lib/nginx/modules/ngx_nchan_module.so

install() {
    if ! command -v nginx >/dev/null || [[ ! -f $module ]]; then
        echo "installing nginx and libnginx-mod-nchan" >&2
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx libnginx-mod-nchan >&2
        # The package may have started the system nginx: it is not ours to stop, but say so.
        if pgrep -x nginx >/dev/null; then echo "note: a system nginx is running too" >&2; fi
    fi
}

start() {
    install
    if alive "$pidfile"; then
        echo "Nchan already running, pid $(cat "$pidfile")" >&2
        cat "$pidfile"
        return
    fi
    port_free "$port"
    mkdir -p "$dir/logs" "$dir/temp"
    # Workers run as `nobody` and may need the temp directories.
    chmod 1777 "$dir/temp"
    sed -e "s|@PORT@|$port|g" -e "s|@MODULE@|$module|g" "$repo/bench/peers/nchan.conf" >"$dir/nginx.conf"
    raise_nofile
    nginx -p "$dir/" -c "$dir/nginx.conf" -e "$dir/logs/error.log"
    wait_port "$port"
    for _ in $(seq 50); do [[ -s $pidfile ]] && break; sleep 0.1; done
    echo "Nchan on 127.0.0.1:$port, prefix $dir" >&2
    cat "$pidfile"
}

stop() {
    # SIGTERM is nginx's fast shutdown: the master stops its workers and exits.
    stop_pid "$pidfile"
}

main "$@"
