# shellcheck shell=bash
# persona itself as part of the stack (sourced by scripts/stack): N `persona serve` instances in
# one consumer group, instance I answering on 127.0.0.1:PERSONA_PORT+I-1, the way several replicas
# run behind a load balancer. Each splits the CDC partitions with the others and serves every
# user's features from the shared Redis (the Redis Cluster when the stack has one).
# `scripts/stack up --instances N` starts them (and remembers N); `persona-kill I` and
# `persona-start I` crash and restart one, for failure drills. They run the debug build unless
# PERSONA_STACK_PERSONA_BIN names another.

PERSONA_DIR=$STATE/persona
PERSONA_PORT=${PERSONA_STACK_PERSONA_PORT:-28080}
PERSONA_GROUP=persona-stack

persona_instance_count() { cat "$PERSONA_DIR/instances" 2>/dev/null || echo 0; }
persona_port() { echo $((PERSONA_PORT + $1 - 1)); }
persona_url() { echo "http://127.0.0.1:$(persona_port "$1")"; }
persona_ready() { curl -sf "$(persona_url "$1")/readyz" >/dev/null; }
# Alive and ready: an instance that exited is not "ready" because something else answers.
persona_up() { pid_alive "$STATE/run/persona-$1.pid" && persona_ready "$1"; }

persona_instance_id() {
  [[ ${1:-} =~ ^[0-9]+$ ]] && (($1 >= 1 && $1 <= $(persona_instance_count))) \
    || die "name a persona instance between 1 and $(persona_instance_count) (scripts/stack up --instances N)"
  echo "$1"
}

start_persona_instance() {
  local id=$1 port bin
  port=$(persona_port "$id")
  if pid_alive "$STATE/run/persona-$id.pid"; then return 0; fi
  port_open "$port" && die "port $port is taken by another process (set PERSONA_STACK_PERSONA_PORT)"
  # PERSONA_STACK_PERSONA_BIN: another build (a release one, for benchmarks).
  bin=${PERSONA_STACK_PERSONA_BIN:-$(persona_bin)}
  mkdir -p "$STATE/logs" "$STATE/run"
  # Each instance reads the stack's environment; on a Redis Cluster it waits for one replica to
  # hold each write (redis.min_replica_acks), so a primary's crash loses nothing acknowledged.
  # A stable kafka.instance_id (static membership) gives a restarted instance its partitions
  # back without a rebalance of the whole group.
  (
    # shellcheck disable=SC1091
    source "$STATE/stack.env"
    if redis_cluster_wanted; then
      export PERSONA_REDIS__URL=$PERSONA_REDIS_CLUSTER_URL PERSONA_REDIS__MIN_REPLICA_ACKS=1
    fi
    PERSONA_API__LISTEN=127.0.0.1:$port PERSONA_KAFKA__GROUP_ID=$PERSONA_GROUP \
      PERSONA_KAFKA__INSTANCE_ID=stack-$id RUST_LOG=${RUST_LOG:-info,librdkafka=warn} NO_COLOR=1 \
      setsid nohup "$bin" serve >>"$STATE/logs/persona-$id.log" 2>&1 &
    echo $! >"$STATE/run/persona-$id.pid"
  )
  wait_for "persona instance $id (see $STATE/logs/persona-$id.log)" 120 persona_up "$id"
  step "persona: instance $id ready on $(persona_url "$id")"
}

# start_persona_instances N: instances 1..N started, those past N (from an earlier, larger N)
# stopped.
start_persona_instances() {
  local wanted=$1 id names=()
  for ((id = wanted + 1; id <= $(persona_instance_count); id++)); do names+=("persona-$id"); done
  ((${#names[@]})) && stop_pid "${names[@]}"
  mkdir -p "$PERSONA_DIR"
  echo "$wanted" >"$PERSONA_DIR/instances"
  ((wanted > 0)) || return 0
  for ((id = 1; id <= wanted; id++)); do start_persona_instance "$id"; done
  step "persona: $wanted instance(s) in group $PERSONA_GROUP on $(persona_url 1) .. $(persona_url "$wanted")"
}

# Before the components they read from: a draining instance still commits its offsets.
stop_persona_instances() {
  local id names=()
  for ((id = 1; id <= $(persona_instance_count); id++)); do names+=("persona-$id"); done
  ((${#names[@]})) && stop_pid "${names[@]}"
  return 0
}

persona_instance_urls() {
  local id urls=()
  for ((id = 1; id <= $(persona_instance_count); id++)); do urls+=("$(persona_url "$id")"); done
  echo "${urls[*]}"
}

persona_status() {
  local id
  for ((id = 1; id <= $(persona_instance_count); id++)); do
    if pid_alive "$STATE/run/persona-$id.pid"; then
      local readiness
      readiness=$(curl -s "$(persona_url "$id")/readyz" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])' 2>/dev/null || echo "not answering")
      line "persona $id" "up $(persona_url "$id") ($readiness)"
    else
      line "persona $id" down
      ok=1
    fi
  done
}
