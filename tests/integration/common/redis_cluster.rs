//! A Redis Cluster of the test's own: three primaries with one replica each, as redis-server
//! processes on free ports, so a test may kill and restart any node.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{DEADLINE, free_port};

pub struct OwnRedisCluster {
    nodes: Vec<Node>,
    dir: tempfile::TempDir,
}

struct Node {
    port: u16,
    bus_port: u16,
    child: Option<Child>,
}

impl OwnRedisCluster {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let nodes: Vec<Node> = (0..6).map(|index| start_node(&dir, index)).collect();
        let cluster = Self { nodes, dir };
        let addresses: Vec<String> =
            cluster.nodes.iter().map(|node| format!("127.0.0.1:{}", node.port)).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stdout));
        cluster.wait_until_healthy();
        cluster
    }

    /// `redis-cluster://…` naming every node.
    pub fn url(&self) -> String {
        let others: Vec<String> =
            self.nodes[1..].iter().map(|node| format!("node=127.0.0.1:{}", node.port)).collect();
        format!("redis-cluster://127.0.0.1:{}?{}", self.nodes[0].port, others.join("&"))
    }

    /// Runs one command on node `index` through redis-cli; its reply as text.
    pub fn command(&self, index: usize, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-p", &self.nodes[index].port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// The nodes serving as primaries now.
    pub fn primaries(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|index| self.nodes[*index].child.is_some())
            .filter(|index| self.command(*index, &["role"]).starts_with("master"))
            .collect()
    }

    /// The primary serving `key`'s slot.
    pub fn primary_of(&self, key: &str) -> usize {
        let primaries = self.primaries();
        let slot: u32 =
            self.command(primaries[0], &["cluster", "keyslot", key]).parse().expect("slot");
        primaries
            .into_iter()
            .find(|index| self.owns_slot(*index, slot))
            .expect("a primary serves every slot")
    }

    /// The node replicating primary `primary`.
    pub fn replica_of(&self, primary: usize) -> usize {
        let id = self.command(primary, &["cluster", "myid"]);
        (0..self.nodes.len())
            .filter(|index| self.nodes[*index].child.is_some())
            .find(|index| {
                let role = self.command(*index, &["cluster", "nodes"]);
                role.lines()
                    .any(|line| line.contains("myself") && line.contains(&format!("slave {id}")))
            })
            .expect("every primary has a replica")
    }

    fn owns_slot(&self, index: usize, slot: u32) -> bool {
        let myself = self.command(index, &["cluster", "myid"]);
        let nodes = self.command(index, &["cluster", "nodes"]);
        nodes.lines().filter(|line| line.starts_with(&myself)).any(|line| {
            line.split_whitespace().skip(8).any(|range| match range.split_once('-') {
                Some((start, end)) => {
                    start.parse::<u32>().is_ok_and(|s| s <= slot)
                        && end.parse::<u32>().is_ok_and(|e| slot <= e)
                }
                None => range.parse::<u32>().is_ok_and(|single| single == slot),
            })
        })
    }

    /// How many keys node `index` holds.
    pub fn keys_on(&self, index: usize) -> u64 {
        self.command(index, &["dbsize"]).parse().unwrap_or(0)
    }

    /// How many times node `index` ran `command` (lower case), from `INFO commandstats`.
    pub fn calls(&self, index: usize, command: &str) -> u64 {
        let stats = self.command(index, &["info", "commandstats"]);
        let prefix = format!("cmdstat_{command}:calls=");
        stats
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |calls| calls.parse().expect("a count of calls"))
    }

    /// The keys node `index` holds that match `pattern`.
    pub fn keys_matching(&self, index: usize, pattern: &str) -> Vec<String> {
        let output = Command::new("redis-cli")
            .args(["-p", &self.nodes[index].port.to_string(), "--scan", "--pattern", pattern])
            .output()
            .expect("redis-cli --scan");
        String::from_utf8_lossy(&output.stdout).lines().map(str::to_string).collect()
    }

    pub fn slot_of(&self, key: &str) -> u16 {
        self.command(self.primaries()[0], &["cluster", "keyslot", key]).parse().expect("slot")
    }

    fn id(&self, index: usize) -> String {
        self.command(index, &["cluster", "myid"])
    }

    /// Moves `slot` and every key it holds from primary `from` to primary `to`, as
    /// `redis-cli --cluster reshard` does.
    pub fn move_slot(&self, slot: u16, from: usize, to: usize) {
        let slot = slot.to_string();
        let (from_id, to_id) = (self.id(from), self.id(to));
        assert_eq!(self.command(to, &["cluster", "setslot", &slot, "importing", &from_id]), "OK");
        assert_eq!(self.command(from, &["cluster", "setslot", &slot, "migrating", &to_id]), "OK");
        let to_port = self.nodes[to].port.to_string();
        loop {
            let keys = self.command(from, &["cluster", "getkeysinslot", &slot, "100"]);
            let keys: Vec<&str> = keys.lines().filter(|key| !key.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let mut migrate = vec!["migrate", "127.0.0.1", &to_port, "", "0", "5000", "keys"];
            migrate.extend(keys);
            assert_eq!(self.command(from, &migrate), "OK", "MIGRATE to node {to}");
        }
        for primary in self.primaries() {
            let answer = self.command(primary, &["cluster", "setslot", &slot, "node", &to_id]);
            assert_eq!(answer, "OK", "SETSLOT NODE on node {primary}");
        }
    }

    /// Kills node `index` as a crash would (SIGKILL).
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `index` again on its port and data; it rejoins the cluster.
    pub fn restart(&mut self, index: usize) {
        let (port, bus_port) = (self.nodes[index].port, self.nodes[index].bus_port);
        self.nodes[index].child = Some(spawn(&self.dir, index, port, bus_port));
        self.wait_for_ping(index);
    }

    /// Every slot served by a live primary, and every node agreeing.
    pub fn wait_until_healthy(&self) {
        let started = Instant::now();
        loop {
            let live: Vec<usize> =
                (0..self.nodes.len()).filter(|index| self.nodes[*index].child.is_some()).collect();
            // And every replica in sync with its primary, so that writes can wait for it.
            let healthy = live.iter().all(|index| {
                self.command(*index, &["cluster", "info"]).contains("cluster_state:ok")
                    && self.command(*index, &["info", "replication"]).lines().all(|line| {
                        !line.starts_with("master_link_status:")
                            || line.starts_with("master_link_status:up")
                    })
            });
            if healthy {
                return;
            }
            assert!(started.elapsed() < DEADLINE, "the redis cluster did not become healthy");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_for_ping(&self, index: usize) {
        let started = Instant::now();
        while self.command(index, &["ping"]) != "PONG" {
            assert!(started.elapsed() < DEADLINE, "redis cluster node {index} did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Starts node `index` on free ports, on others when those were taken meanwhile (by a test
/// starting a cluster at the same time): redis-server then exits at once.
fn start_node(dir: &tempfile::TempDir, index: usize) -> Node {
    for _ in 0..5 {
        let (port, bus_port) = (free_port(), free_port());
        let mut child = spawn(dir, index, port, bus_port);
        let started = Instant::now();
        loop {
            if child.try_wait().expect("redis-server status").is_some() {
                break;
            }
            // Ours, not another test's that took the port first.
            let ours = Command::new("redis-cli")
                .args(["-p", &port.to_string(), "info", "server"])
                .output()
                .is_ok_and(|out| {
                    String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .any(|line| line.trim() == format!("process_id:{}", child.id()))
                });
            if ours {
                return Node { port, bus_port, child: Some(child) };
            }
            assert!(started.elapsed() < DEADLINE, "redis cluster node {index} did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    panic!("redis cluster node {index} exited at start five times (ports taken?)");
}

fn spawn(dir: &tempfile::TempDir, index: usize, port: u16, bus_port: u16) -> Child {
    let data = dir.path().join(index.to_string());
    std::fs::create_dir_all(&data).expect("node dir");
    Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--cluster-enabled", "yes", "--cluster-port", &bus_port.to_string()])
        .args(["--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "1000"])
        .args(["--appendonly", "yes", "--appendfsync", "everysec", "--save", ""])
        .arg("--dir")
        .arg(&data)
        .stdout(Stdio::null())
        .spawn()
        .expect("start redis-server")
}

impl Drop for OwnRedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
