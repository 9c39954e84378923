#!/usr/bin/env bash
# A real Apache Kafka broker for the tests: one combined KRaft node (broker + controller) on
# loopback, with its internal topics at replication factor 1 and min ISR 1 so transactions work.
#
#   kafka.sh start DIR PORT   format DIR once, start the broker, wait until it serves; prints
#                             the bootstrap address. The broker's pid is in DIR/pid.
#   kafka.sh stop DIR         SIGTERM, then wait for it to exit (SIGKILL after 30 s).
#
# Starting again on the same DIR keeps its data: a broker killed -9 comes back with its log.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

cmd="${1:-}"; dir="${2:-}"
if [ -z "$cmd" ] || [ -z "$dir" ]; then echo "usage: $0 start DIR PORT | stop DIR" >&2; exit 2; fi
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"

alive() { [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; }

case "$cmd" in
start)
  port="${3:?port}"
  cport=$((port + 1))
  libs="${STREAMSCAN_KAFKA_LIBS:-$("$here/fetch-kafka.sh")}"
  if alive; then echo "kafka.sh: a broker already runs from $dir (pid $(cat "$dir/pid"))" >&2; exit 1; fi
  cat > "$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
PROPS
  cat > "$dir/log4j2.yaml" <<'YAML'
Configuration:
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: WARN
      AppenderRef:
        - ref: STDOUT
    Logger:
      - name: kafka.server.KafkaRaftServer
        level: INFO
      - name: kafka.server.BrokerServer
        level: INFO
YAML
  java=(java -Xms256m -Xmx768m -XX:+UseG1GC -XX:TieredStopAtLevel=1 -Dlog4j2.configurationFile="$dir/log4j2.yaml" -cp "$libs/*")
  if [ ! -f "$dir/data/meta.properties" ]; then
    "${java[@]}" kafka.tools.StorageTool format -t "${STREAMSCAN_KAFKA_CLUSTER_ID:-c3RyZWFtc2Nhbi10ZXN0cw}" -c "$dir/server.properties" >"$dir/format.log" 2>&1 \
      || { cat "$dir/format.log" >&2; exit 1; }
  fi
  nohup "${java[@]}" kafka.Kafka "$dir/server.properties" >>"$dir/broker.log" 2>&1 &
  echo $! > "$dir/pid"
  # The broker outlives no test: stopped when the process that started it is gone (its
  # STREAMSCAN_REAL_OWNER_PID, or this script's parent).
  if ! { [ -f "$dir/watchdog.pid" ] && kill -0 "$(cat "$dir/watchdog.pid")" 2>/dev/null; }; then
    nohup "$here/watchdog.sh" "${STREAMSCAN_REAL_OWNER_PID:-$PPID}" "$dir" "$here/kafka.sh" stop "$dir" \
      </dev/null >/dev/null 2>&1 &
    echo $! > "$dir/watchdog.pid"
  fi
  # Ready when the broker has started and its listener takes connections.
  for _ in $(seq 1 600); do
    if ! alive; then echo "kafka.sh: the broker exited; its log:" >&2; tail -50 "$dir/broker.log" >&2; exit 1; fi
    if grep -q "Kafka Server started\|\[BrokerServer id=1\] Transition from STARTING to STARTED" "$dir/broker.log" 2>/dev/null \
      && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "127.0.0.1:$port"; exit 0
    fi
    sleep 0.1
  done
  echo "kafka.sh: the broker did not start within 60 s; its log:" >&2; tail -50 "$dir/broker.log" >&2; exit 1
  ;;
stop)
  if [ -f "$dir/watchdog.pid" ] && [ "$(cat "$dir/watchdog.pid")" != "${WATCHDOG_PID:-}" ]; then
    kill "$(cat "$dir/watchdog.pid")" 2>/dev/null || true
    rm -f "$dir/watchdog.pid"
  fi
  alive || exit 0
  pid="$(cat "$dir/pid")"
  kill -TERM "$pid"
  for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || exit 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  ;;
*) echo "usage: $0 start DIR PORT | stop DIR" >&2; exit 2 ;;
esac
