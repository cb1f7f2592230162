# shellcheck shell=bash
# The stack's Redis Cluster (sourced by scripts/stack): three primaries with one replica each, as
# local redis-server processes on REDIS_CLUSTER_PORT .. REDIS_CLUSTER_PORT+5, beside the
# single-node Redis the rest of the stack uses. Created once by `scripts/stack up --cluster` and
# remembered by later `up`s; its nodes keep their data and cluster configuration in
# $STATE/redis-cluster/<id>, so a node killed and started again rejoins as it would in production
# (a primary that was failed over comes back as a replica of its replacement).

REDIS_CLUSTER=$STATE/redis-cluster
REDIS_CLUSTER_PORT=${PERSONA_STACK_REDIS_CLUSTER_PORT:-26380}
REDIS_CLUSTER_NODES=6

redis_cluster_wanted() { [[ -f $REDIS_CLUSTER/enabled ]]; }
redis_node_port() { echo $((REDIS_CLUSTER_PORT + $1 - 1)); }

redis_cluster_url() {
  local nodes=() id
  for ((id = 2; id <= REDIS_CLUSTER_NODES; id++)); do nodes+=("node=127.0.0.1:$(redis_node_port "$id")"); done
  (IFS='&'; echo "redis-cluster://127.0.0.1:$(redis_node_port 1)?${nodes[*]}")
}

redis_node_id() {
  [[ ${1:-} =~ ^[0-9]+$ ]] && (($1 >= 1 && $1 <= REDIS_CLUSTER_NODES)) \
    || die "name a Redis Cluster node between 1 and $REDIS_CLUSTER_NODES"
  echo "$1"
}

start_redis_node() {
  local id=$1 port dir
  port=$(redis_node_port "$id")
  dir=$REDIS_CLUSTER/$id
  mkdir -p "$dir" "$STATE/logs" "$STATE/run"
  pid_alive "$STATE/run/redis-node-$id.pid" && return 0
  port_open "$port" && die "port $port is taken by another process (set PERSONA_STACK_REDIS_CLUSTER_PORT)"
  # The cluster bus defaults to port + 10000, past 65535 here.
  # Acknowledged writes survive a primary's crash through its replica (persona waits for one,
  # redis.min_replica_acks), not through its disk.
  # A short node timeout lets the failover tests see a replica promoted within seconds.
  redis-server --bind 127.0.0.1 --port "$port" --daemonize yes --dir "$dir" \
    --cluster-enabled yes --cluster-port $((port - 10000)) --cluster-config-file nodes.conf \
    --cluster-node-timeout 2000 \
    --appendonly yes --appendfsync everysec --save "" \
    --pidfile "$STATE/run/redis-node-$id.pid" --logfile "$STATE/logs/redis-node-$id.log"
  wait_for "redis cluster node $id" 20 redis-cli -p "$port" ping
}

# Every slot served, every node agreeing on it, and every primary with a replica in sync.
# (Field 3 of CLUSTER NODES holds the flags, "myself,slave" on node 1 once it was failed over.)
redis_cluster_ok() {
  redis-cli -p "$(redis_node_port 1)" cluster info 2>/dev/null | grep -q '^cluster_state:ok' \
    && redis-cli --cluster check "127.0.0.1:$(redis_node_port 1)" >/dev/null 2>&1 \
    && [[ $(redis-cli -p "$(redis_node_port 1)" cluster nodes \
      | awk '$3 ~ /slave/ && $3 !~ /fail/' | wc -l) == 3 ]]
}

start_redis_cluster() {
  local id addresses=()
  mkdir -p "$REDIS_CLUSTER"
  touch "$REDIS_CLUSTER/enabled"
  for ((id = 1; id <= REDIS_CLUSTER_NODES; id++)); do
    start_redis_node "$id"
    addresses+=("127.0.0.1:$(redis_node_port "$id")")
  done
  if [[ ! -f $REDIS_CLUSTER/created ]]; then
    # The first three nodes become primaries; each of the others replicates one of them.
    redis-cli --cluster create "${addresses[@]}" --cluster-replicas 1 --cluster-yes \
      >"$STATE/logs/redis-cluster-create.log" 2>&1 \
      || die "creating the Redis Cluster failed; see $STATE/logs/redis-cluster-create.log"
    touch "$REDIS_CLUSTER/created"
  fi
  wait_for "the Redis Cluster (redis-cli --cluster check 127.0.0.1:$(redis_node_port 1))" 60 redis_cluster_ok
  step "redis cluster: 3 primaries, 3 replicas on 127.0.0.1:$(redis_node_port 1)-$(redis_node_port "$REDIS_CLUSTER_NODES")"
}

stop_redis_cluster() {
  local id names=()
  for ((id = 1; id <= REDIS_CLUSTER_NODES; id++)); do names+=("redis-node-$id"); done
  stop_pid "${names[@]}"
}

redis_cluster_status() {
  local id
  redis_cluster_wanted || return 0
  for ((id = 1; id <= REDIS_CLUSTER_NODES; id++)); do
    if pid_alive "$STATE/run/redis-node-$id.pid"; then
      line "redis node $id" "up 127.0.0.1:$(redis_node_port "$id") ($(redis-cli -p "$(redis_node_port "$id")" role 2>/dev/null | head -n 1))"
    else
      line "redis node $id" down
      ok=1
    fi
  done
}
