#!/usr/bin/env bash
# SMTP injection throughput, measured with Postfix's smtp-source against volley's
# submission listener (trusted network, no AUTH, durable store before each 250), with
# the messages delivered onwards to volley-sink in the same run; and, as the ceiling of
# this client on this machine, smtp-source straight into volley-sink, and into Postfix's
# own smtp-sink (an independent server that stores nothing) where it is installed.
#
# Usage: loadtest/smtp-inject.sh [MESSAGES] [SESSIONS] [SIZE]   (default 20000 50 2048)
# HOLD=1 holds delivery back ([dispatch] deliver = false) to measure the intake alone;
# VOLLEY=PATH runs another build of volley (to compare two builds in one series).
# Needs: smtp-source (Debian's postfix package) and a release build
#   (cargo build --release -p volley -p volley-loadtest). Loopback only; every run is
# bounded by its message count and a 300 s timeout.
set -euo pipefail
cd "$(dirname "$0")/.."

messages=${1:-20000}
sessions=${2:-50}
size=${3:-2048}
bin=target/release
command -v smtp-source >/dev/null || PATH=$PATH:/usr/sbin
command -v smtp-source >/dev/null || { echo "smtp-source is missing (apt-get install postfix)" >&2; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # at most 10 s for something to answer on 127.0.0.1:PORT
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return
        sleep 0.1
    done
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

sink_port=$(free_port)
api_port=$(free_port)
smtp_port=$(free_port)
"$bin/volley-sink" --listen "127.0.0.1:$sink_port" >"$work/sink.log" 2>&1 &
pids+=($!)
sink_pid=$!

cat >"$work/volley.toml" <<EOF
[server]
listen = "127.0.0.1:$api_port"
[queue]
path = "$work/volley-data"
[templates]
path = "$PWD/templates"
[relay]
host = "127.0.0.1:$sink_port"
tls = "none"
[submission]
listen = "127.0.0.1:$smtp_port"
trusted_networks = ["127.0.0.0/8"]
EOF
if [ "${HOLD:-0}" = 1 ]; then
    printf '[dispatch]\ndeliver = false\n' >>"$work/volley.toml"
fi
"${VOLLEY:-$bin/volley}" serve --config "$work/volley.toml" >"$work/volley.log" 2>&1 &
pids+=($!)
volley_pid=$!
wait_port "$smtp_port"

run() { # target → elapsed seconds
    local start end
    start=$(date +%s.%N)
    timeout 300 smtp-source -s "$sessions" -m "$messages" -l "$size" \
        -f load@example.com -t rcpt@example.org "127.0.0.1:$1"
    end=$(date +%s.%N)
    python3 -c "print($end - $start)"
}

# Postfix's smtp-sink, as a reference nobody here wrote (it refuses to run as root
# without -u).
postfix_s=0 p0=0 p1=0
if command -v smtp-sink >/dev/null; then
    postfix_port=$(free_port)
    user=()
    [ "$(id -u)" = 0 ] && user=(-u nobody)
    smtp-sink "${user[@]}" "127.0.0.1:$postfix_port" 256 >/dev/null 2>&1 &
    pids+=($!)
    postfix_pid=$!
    wait_port "$postfix_port"
fi

c0=$(cpu_ticks "$sink_pid")
ceiling_s=$(run "$sink_port")
c1=$(cpu_ticks "$sink_pid")
if [ -n "${postfix_pid:-}" ]; then
    p0=$(cpu_ticks "$postfix_pid")
    postfix_s=$(run "$postfix_port")
    p1=$(cpu_ticks "$postfix_pid")
fi
v0=$(cpu_ticks "$volley_pid")
volley_s=$(run "$smtp_port")
v1=$(cpu_ticks "$volley_pid")
# Wait (at most 120 s) until every message has been delivered onwards.
delivered=0
[ "${HOLD:-0}" = 1 ] && wait_rounds=0 || wait_rounds=1200
for _ in $(seq 1 "$wait_rounds"); do
    delivered=$(curl -s "http://127.0.0.1:$api_port/metrics" \
        | awk '/^volley_deliveries_total\{outcome="delivered"\}/ {print $2}')
    [ "${delivered:-0}" -ge "$messages" ] && break
    sleep 0.1
done
v2=$(cpu_ticks "$volley_pid")

python3 - "$messages" "$ceiling_s" "$volley_s" "$hz" "$c0" "$c1" "$v0" "$v1" "$v2" "$delivered" \
    "$postfix_s" "$p0" "$p1" <<'EOF'
import json, sys
n, ceiling_s, volley_s, hz = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
c0, c1, v0, v1, v2, delivered = (int(float(x)) for x in sys.argv[5:11])
postfix_s, p0, p1 = float(sys.argv[11]), int(float(sys.argv[12])), int(float(sys.argv[13]))
per10k = lambda ticks: ticks / hz / n * 10000
postfix = {
    "postfix_smtp_sink_per_s": round(n / postfix_s),
    "postfix_smtp_sink_cpu_s_per_10k": round(per10k(p1 - p0), 3),
} if postfix_s > 0 else {}
print(json.dumps({
    "messages": n,
    "ceiling_smtp_source_to_sink_per_s": round(n / ceiling_s),
    "sink_cpu_s_per_10k": round(per10k(c1 - c0), 3),
    **postfix,
    "volley_accepted_per_s": round(n / volley_s),
    "ratio_to_ceiling": round(ceiling_s / volley_s, 3),
    "volley_cpu_s_per_10k_during_injection": round(per10k(v1 - v0), 3),
    "volley_cpu_s_per_10k_until_delivered": round(per10k(v2 - v0), 3),
    "delivered_onwards": delivered,
}))
EOF
