#!/usr/bin/env bash
# End-to-end Kafka ingestion against a real broker (tansu) and the real `vigil` binary:
#   1. N Collector-shaped OTLP protobuf messages (and one poison message) are produced in two halves; Vigil
#      is killed with SIGKILL while the first half flows (checked: some but not all of it stored), the
#      second half is produced while it is down, and it is restarted; every message's events must be
#      stored exactly once, the poison message must be in the dead-letter topic with its four headers, and
#      /metrics must show the lag (0 at the end) and the dead-letter count.
#   2. Two Vigil instances in one consumer group split the partitions: together they store M more
#      messages' events, each exactly once, and each instance stores some.
#
# Usage: tests/kafka_e2e.sh            (N=200 messages of 3 spans, M=80; override with N=, M=, SPANS=)
# Prints `kafka_e2e: P passed, F failed` last (on stdout); exits non-zero on the first failed check.
# Needs: the vigil binary ($VIGIL_BIN, else $CARGO_TARGET_DIR/debug/vigil, else target/debug/vigil), the
# tansu broker ($TANSU_BIN, else ~/.cache/vigil-tools/bin/tansu, installed by tests/install_tansu.sh if missing), python3
# with confluent-kafka and opentelemetry-proto (installed with pip if missing).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
N="${N:-200}"
M="${M:-80}"
SPANS="${SPANS:-3}"
PARTITIONS=4
TIMEOUT="${TIMEOUT:-120}"

VIGIL="${VIGIL_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/vigil}"
TANSU="${TANSU_BIN:-}"
PRODUCE=(python3 "$ROOT/tests/kafka_produce.py")

log() { printf '[kafka_e2e] %s\n' "$*" >&2; }
fail() { log "FAIL: $*"; FAILED=1; exit 1; }
PASSED=0
pass() { PASSED=$((PASSED + 1)); log "ok: $*"; }

[ -x "$VIGIL" ] || { log "no vigil binary at $VIGIL (cargo build, or set VIGIL_BIN)"; exit 1; }
# Without a usable $TANSU_BIN: the cached broker, installed first if missing.
[ -x "$TANSU" ] || TANSU="$(bash "$ROOT/tests/install_tansu.sh")"
python3 -c 'import confluent_kafka, opentelemetry.proto' 2>/dev/null \
  || python3 -m pip install -q --disable-pip-version-check -r "$ROOT/tests/requirements.txt"

WORK="$(mktemp -d -t vigil-kafka-e2e.XXXXXX)"
PIDS=()
FAILED=0
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$FAILED" = 1 ]; then
    log "logs kept in $WORK"
    for f in "$WORK"/*.log; do log "--- tail $f"; tail -n 20 "$f" >&2 || true; done
    echo "kafka_e2e: $PASSED passed, 1 failed"
  else
    rm -rf "$WORK"
    echo "kafka_e2e: $PASSED passed, 0 failed"
  fi
}
trap 'FAILED=1' ERR
trap cleanup EXIT

# A loopback port nothing listens on, below Linux's ephemeral range (32768-60999): a port from bind(0) is in that
# range, where a Kafka client's outgoing connection may take it before the server binds it (CI saw that).
NEXT_PORT=$((20000 + ($$ * 7919) % 12000))
# free_port VAR: sets VAR (not a $(...) subshell, which would lose the NEXT_PORT step).
free_port() {
  local _fp
  while :; do
    _fp=$NEXT_PORT
    NEXT_PORT=$((20000 + (NEXT_PORT - 20000 + 1) % 12000))
    if python3 -c "import socket; socket.socket().bind(('127.0.0.1', $_fp))" 2>/dev/null; then
      printf -v "$1" '%s' "$_fp"
      return
    fi
  done
}

wait_port() { # host port what
  local deadline=$((SECONDS + 30))
  until python3 -c "import socket,sys; socket.create_connection(('$1', $2), 1)" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || fail "$3 did not listen on $1:$2"
    sleep 0.2
  done
}

# --- the broker ----------------------------------------------------------------------------------------
free_port KPORT
BROKERS="127.0.0.1:$KPORT"
mkdir -p "$WORK/tansu"
touch "$WORK/tansu/.env" # tansu reads .env from its working directory: an empty one keeps it from ours
(cd "$WORK/tansu" && exec "$TANSU" broker --listener-url "tcp://$BROKERS" --advertised-listener-url "tcp://$BROKERS" \
  --storage-engine memory://tansu/ >"$WORK/tansu.log" 2>&1) &
PIDS+=($!)
wait_port 127.0.0.1 "$KPORT" tansu
for topic in otlp_spans:$PARTITIONS otlp_logs:1 vigil_events:1 vigil_dlq:1; do
  "$TANSU" topic create "${topic%%:*}" --broker "tcp://$BROKERS" --partitions "${topic##*:}" >>"$WORK/tansu.log" 2>&1
done
log "tansu on $BROKERS with topics otlp_spans($PARTITIONS) otlp_logs vigil_events vigil_dlq"

# --- vigil instances -----------------------------------------------------------------------------------
# The admin port (SQL API, /metrics) wants a token when the binary has authentication (`vigil token`);
# each instance gets one admin token in its data dir, created once and kept across restarts.
HAS_TOKENS=0
"$VIGIL" token --help >/dev/null 2>&1 && HAS_TOKENS=1

# start_vigil NAME: starts `vigil serve` with its own data dir and ports; sets ADMIN_<NAME>, PID_<NAME> and
# TOKEN_<NAME>.
start_vigil() {
  local name="$1" admin grpc http pg port
  free_port port; admin="127.0.0.1:$port"
  free_port port; grpc="127.0.0.1:$port"
  free_port port; http="127.0.0.1:$port"
  free_port port; pg="127.0.0.1:$port"
  mkdir -p "$WORK/data-$name"
  "$VIGIL" --data-dir "$WORK/data-$name" --admin-addr "$admin" serve \
    --otlp-grpc-addr "$grpc" --otlp-http-addr "$http" --pg-addr "$pg" --kafka-brokers "$BROKERS" \
    >>"$WORK/vigil-$name.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  printf -v "PID_$name" '%s' "$pid"
  printf -v "ADMIN_$name" '%s' "$admin"
  wait_port 127.0.0.1 "${admin##*:}" "vigil $name admin"
  local token_var="TOKEN_$name"
  if [ "$HAS_TOKENS" = 1 ] && [ -z "${!token_var:-}" ]; then
    local token
    token="$("$VIGIL" --data-dir "$WORK/data-$name" token create --name kafka-e2e --scope admin 2>>"$WORK/sql.log")" \
      || fail "cannot create a token for vigil $name"
    printf -v "TOKEN_$name" '%s' "$token"
  fi
}

# as_client NAME CMD...: runs a `vigil` client command against instance NAME with its token.
as_client() {
  local name="$1" admin_var="ADMIN_$1" token_var="TOKEN_$1"
  shift
  local token="${!token_var:-}"
  env ${token:+VIGIL_TOKEN="$token"} "$VIGIL" --data-dir "$WORK/data-$name" --admin-addr "${!admin_var}" "$@"
}

# sql NAME QUERY: one CSV value (the query must return one row, one column).
sql() {
  as_client "$1" sql --format csv "$2" 2>>"$WORK/sql.log" | tail -n 1 | tr -d '\r "'
}

# assigned NAME: whether instance NAME's latest rebalance left it with at least one partition.
assigned() {
  grep -a 'kafka partitions \(assigned\|revoked\)' "$WORK/vigil-$1.log" | tail -n 1 | grep -q 'assigned.*/[0-9]'
}

# wait_count NAME EXPECTED: until `SELECT count(*) FROM events` reaches EXPECTED (fails past it or on timeout).
wait_count() {
  local deadline=$((SECONDS + TIMEOUT)) count=""
  while [ $SECONDS -lt $deadline ]; do
    count="$(sql "$1" 'SELECT count(*) FROM events' || true)"
    [ "$count" = "$2" ] && return 0
    sleep 1
  done
  fail "vigil $1 stored ${count:-?} events, expected $2"
}

# --- 1. kill -9 halfway, restart: every event exactly once; poison message dead-lettered ---------------
# The first half is produced while vigil a consumes it, and vigil a is killed mid-stream; the second half
# (and the poison message) is produced while it is down. The restart must then both replay the
# uncommitted tail and read a backlog, and the dead letter is written by the restarted instance, whose
# /metrics is checked below.
EXPECTED=$((N * SPANS))
HALF=$((N / 2))
start_vigil a
deadline=$((SECONDS + TIMEOUT))
until assigned a; do # producing before it holds partitions would let it read the first half in one go
  [ $SECONDS -lt $deadline ] || fail "vigil a got no partitions"
  sleep 0.5
done
RATE=$((HALF / 5 + 1)) # the first half over about five seconds, so the kill lands while it flows
"${PRODUCE[@]}" --brokers "$BROKERS" produce --count "$HALF" --spans "$SPANS" --rate "$RATE" \
  >>"$WORK/produce.log" 2>&1 &
PRODUCER=$!
until [ "$(sql a 'SELECT count(*) FROM events' || echo 0)" -gt 0 ] 2>/dev/null; do
  [ $SECONDS -lt $deadline ] || fail "vigil a stored nothing from Kafka"
  sleep 0.5
done
sleep 1
before_kill="$(sql a 'SELECT count(*) FROM events' || echo '?')"
kill -9 "$PID_a"
{ wait "$PID_a"; } 2>/dev/null || true # braces: bash's own "Killed" notice goes to /dev/null too
log "killed vigil a with SIGKILL after $before_kill of the first half's $((HALF * SPANS)) events ($EXPECTED in all)"
[[ "$before_kill" =~ ^[0-9]+$ ]] || fail "cannot count the events stored before the kill ($before_kill)"
# A kill after the whole first half was stored would prove nothing about an interrupted stream.
[ "$before_kill" -gt 0 ] && [ "$before_kill" -lt $((HALF * SPANS)) ] \
  || fail "the kill did not land mid-stream: $before_kill of the first half's $((HALF * SPANS)) events were stored"
pass "vigil a was killed mid-stream with $before_kill of $EXPECTED events stored"
wait "$PRODUCER" || fail "producer failed: $(tail -n 3 "$WORK/produce.log")"
"${PRODUCE[@]}" --brokers "$BROKERS" produce --count "$((N - HALF))" --first "$((HALF + 1))" --spans "$SPANS" --poison \
  >>"$WORK/produce.log" 2>&1 || fail "producer failed: $(tail -n 3 "$WORK/produce.log")"
start_vigil a
wait_count a "$EXPECTED"
pass "restarted vigil a resumed: $EXPECTED events stored"
distinct="$(sql a 'SELECT count(DISTINCT event_id) FROM events')"
[ "$distinct" = "$EXPECTED" ] || fail "distinct event ids $distinct, expected $EXPECTED"
pass "no event stored twice across the kill ($distinct distinct event ids)"
traces="$(sql a 'SELECT count(DISTINCT trace_id) FROM events')"
[ "$traces" = "$N" ] || fail "$traces messages' events stored, expected $N"
pass "every one of the $N messages arrived"

"${PRODUCE[@]}" --brokers "$BROKERS" dlq --expect 1 --timeout 30 >"$WORK/dlq.jsonl" 2>>"$WORK/produce.log" || true
python3 - "$WORK/dlq.jsonl" <<'EOF' || fail "dead letter missing or wrong: $(cat "$WORK/dlq.jsonl")"
import json, sys
letters = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
assert len(letters) >= 1, "no dead letter"
h = letters[0]["headers"]
assert h.get("vigil.dlq.topic") == "otlp_spans", h
assert h.get("vigil.dlq.partition", "").isdigit() and h.get("vigil.dlq.offset", "").isdigit(), h
assert "otlp_proto" in h.get("vigil.dlq.error", ""), h
EOF
pass "poison message dead-lettered with its four headers"

# /metrics of the restarted instance: messages, the dead letter it wrote, and lag 0 on every otlp_spans
# partition once everything is consumed (lag comes from librdkafka's statistics, emitted every 5 s).
lag_zero() { # otlp_spans partitions are reported (those with a known position), each with lag 0
  awk '/^vigil_kafka_lag\{.*topic="otlp_spans"/ { n++; if ($NF + 0 != 0) bad++ }
    END { exit !(n >= 1 && bad == 0) }' "$WORK/metrics.txt"
}
deadline=$((SECONDS + 30))
while :; do
  curl -fsS ${TOKEN_a:+-H "Authorization: Bearer $TOKEN_a"} "http://$ADMIN_a/metrics" >"$WORK/metrics.txt" 2>>"$WORK/sql.log" || true
  lag_zero && break
  [ $SECONDS -lt $deadline ] \
    || fail "vigil_kafka_lag for otlp_spans missing or not 0: $(grep '^vigil_kafka_lag' "$WORK/metrics.txt" | tr '\n' ' ')"
  sleep 1
done
pass "the restarted instance reports vigil_kafka_lag 0 for otlp_spans"
grep -q '^vigil_kafka_messages_total' "$WORK/metrics.txt" \
  || fail "vigil_kafka_messages_total not on /metrics of the restarted instance"
awk '/^vigil_kafka_dlq_total\{.*topic="otlp_spans"/ && $NF + 0 >= 1 { found = 1 } END { exit !found }' "$WORK/metrics.txt" \
  || fail "vigil_kafka_dlq_total for otlp_spans is not at least 1: $(grep '^vigil_kafka_dlq' "$WORK/metrics.txt" | tr '\n' ' ')"
pass "the restarted instance reports vigil_kafka_messages_total and vigil_kafka_dlq_total"
kill "$PID_a"
wait "$PID_a" 2>/dev/null || true

# --- 2. two instances in one group split the partitions, each message once ----------------------------
start_vigil b
start_vigil c
# Both must hold partitions before the messages arrive, or the first one would read them all.
deadline=$((SECONDS + TIMEOUT))
until assigned b && assigned c; do
  [ $SECONDS -lt $deadline ] || fail "vigil b and c did not both get partitions"
  sleep 0.5
done
"${PRODUCE[@]}" --brokers "$BROKERS" produce --count "$M" --spans "$SPANS" --first 100000 >>"$WORK/produce.log" 2>&1
EXPECTED2=$((M * SPANS))
deadline=$((SECONDS + TIMEOUT))
while :; do
  b="$(sql b 'SELECT count(*) FROM events' || echo 0)"
  c="$(sql c 'SELECT count(*) FROM events' || echo 0)"
  [ $((b + c)) -ge "$EXPECTED2" ] && break
  [ $SECONDS -lt $deadline ] || fail "two instances stored $b + $c events, expected $EXPECTED2"
  sleep 1
done
[ $((b + c)) = "$EXPECTED2" ] || fail "two instances stored $b + $c events, expected exactly $EXPECTED2"
pass "two instances stored $b + $c = $EXPECTED2 events"
[ "$b" -gt 0 ] && [ "$c" -gt 0 ] || fail "one instance got every partition ($b / $c)"
pass "both instances consumed"
list_ids() { as_client "$1" sql --format csv 'SELECT event_id FROM events' 2>>"$WORK/sql.log" | tail -n +2; }
dups="$( (list_ids b; list_ids c) | sort | uniq -d | wc -l)"
[ "$dups" = 0 ] || fail "$dups events stored by both instances"
pass "no event stored by both instances"
