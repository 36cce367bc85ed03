# Helpers shared by the peer scripts (sourced, not run).

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

# wait_port PORT [SECONDS]: until something listens on 127.0.0.1:PORT.
wait_port() {
    local port=$1 deadline=$((SECONDS + ${2:-10}))
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            echo "nothing listens on 127.0.0.1:$port" >&2
            return 1
        fi
        sleep 0.1
    done
}

# port_free PORT: fails if something already listens there.
port_free() {
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
        echo "127.0.0.1:$1 is already in use" >&2
        return 1
    fi
}

# alive PIDFILE: the pid in PIDFILE is a running process.
alive() {
    [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

# stop_pid PIDFILE: SIGTERM the process, wait up to 10 s, then SIGKILL it.
stop_pid() {
    local file=$1 pid
    alive "$file" || { rm -f "$file"; return 0; }
    pid=$(cat "$file")
    kill -TERM "$pid"
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$file"; return 0; }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$file"
}

# The open-file limit as high as it goes (the hard limit here is about 20,000).
raise_nofile() {
    ulimit -n "$(ulimit -Hn)"
}

# Dispatch: start | stop | pid | status.
main() {
    case ${1:-} in
        start) start ;;
        stop) stop ;;
        pid) alive "$pidfile" && cat "$pidfile" ;;
        status) if alive "$pidfile"; then echo "running, pid $(cat "$pidfile")"; else echo stopped; exit 1; fi ;;
        *) echo "usage: $0 start|stop|pid|status" >&2; exit 2 ;;
    esac
}
