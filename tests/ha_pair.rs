//! The redundant pair of docs/high-availability.md, for real: network namespaces joined by a
//! bridge (iproute2), two load-balancer nodes each running keepalived (Debian's, with the
//! configs of examples/keepalived/) and fulcrum, a client node sending load to the virtual
//! IP, and an origin node running three `fulcrum origin` processes. The namespaces are ours
//! alone and have no route out: every address below exists only inside them.
//!
//! Also here, because a pair depends on it: a sticky cookie issued by one instance is
//! honoured by the other.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const FULCRUM: &str = env!("CARGO_BIN_EXE_fulcrum");
const VIP: &str = "10.77.0.100";
const LB: [&str; 2] = ["lb1", "lb2"];
const WAIT: Duration = Duration::from_secs(30);

/// Why this machine cannot run the pair, if it cannot.
fn cannot_run() -> Option<String> {
    if let Some(why) = netns_unavailable("ha") {
        return Some(why);
    }
    let ka = Command::new("keepalived")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !ka.is_ok_and(|s| s.success()) {
        return Some("keepalived is not installed (apt-get install keepalived)".into());
    }
    None
}

/// Skips (with the reason printed) where the pair cannot run, except under CI, which must.
fn skip() -> bool {
    skip_unless_ci(cannot_run().as_deref())
}

/// The lab: namespaces, links and processes, all removed when it drops (also on panic).
struct Lab {
    id: String,
    dir: tempfile::TempDir,
    procs: Mutex<Vec<(String, Child)>>,
    namespaces: Vec<String>,
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("command runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Lab {
    fn ns(&self, node: &str) -> String {
        format!("flha{}-{node}", self.id)
    }

    fn ip(&self, args: &[&str]) {
        run(Command::new("ip").args(args));
    }

    /// Namespaces sw (the bridge), lb1, lb2, cli and org; each node's eth0 on the bridge.
    fn new() -> Lab {
        static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let id = format!(
            "{}{}",
            std::process::id(),
            RUNS.fetch_add(1, Ordering::Relaxed)
        );
        let mut lab = Lab {
            id,
            dir: tempfile::tempdir().unwrap(),
            procs: Mutex::new(Vec::new()),
            namespaces: Vec::new(),
        };
        let nodes = [
            ("lb1", "10.77.0.11"),
            ("lb2", "10.77.0.12"),
            ("cli", "10.77.0.20"),
            ("org", "10.77.0.30"),
        ];
        for n in ["sw", "lb1", "lb2", "cli", "org"] {
            let ns = lab.ns(n);
            lab.ip(&["netns", "add", &ns]);
            lab.namespaces.push(ns.clone());
            lab.ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        // keepalived runs its track script as `nobody`, and only from a path no one but root
        // can write: a copy of the binary in a root-owned directory others may traverse,
        // wherever the checkout lives.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(lab.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::copy(FULCRUM, lab.probe_binary()).expect("copy the fulcrum binary");
        let sw = lab.ns("sw");
        lab.ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        lab.ip(&["-n", &sw, "link", "set", "br0", "up"]);
        for (n, addr) in nodes {
            let ns = lab.ns(n);
            lab.ip(&[
                "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", n, "netns",
                &sw,
            ]);
            lab.ip(&["-n", &sw, "link", "set", n, "master", "br0", "up"]);
            lab.ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ]);
            lab.ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        }
        lab
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// The fulcrum binary keepalived's track script runs.
    fn probe_binary(&self) -> PathBuf {
        self.path("fulcrum")
    }

    /// Starts `args` inside `node`'s namespace as process `label` (its own process group, so
    /// that a kill reaches its children too), output to a log file.
    fn spawn(&self, label: &str, node: &str, args: &[&str]) {
        let log = std::fs::File::create(self.path(&format!("{label}.log"))).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(node)])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("ip netns exec runs");
        self.procs.lock().unwrap().push((label.to_string(), child));
    }

    /// SIGKILLs process `label` and its whole group: a crash, no clean-up of its own.
    fn kill(&self, label: &str) {
        let mut procs = self.procs.lock().unwrap();
        if let Some(i) = procs.iter().position(|(l, _)| l == label) {
            let (_, mut c) = procs.remove(i);
            // SAFETY: kill(2) on the process group of a child we started.
            unsafe { libc::kill(-(c.id() as i32), libc::SIGKILL) };
            let _ = c.wait();
        }
    }

    fn log(&self, label: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{label}.log"))).unwrap_or_default()
    }

    /// Whether `node` holds the VIP.
    fn has_vip(&self, node: &str) -> bool {
        let out = Command::new("ip")
            .args([
                "-n",
                &self.ns(node),
                "-4",
                "-o",
                "addr",
                "show",
                "dev",
                "eth0",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains(&format!("{VIP}/"))
    }

    fn vip_holders(&self) -> Vec<&'static str> {
        LB.into_iter().filter(|n| self.has_vip(n)).collect()
    }

    fn origins(&self) {
        for i in 1..=3 {
            self.spawn(
                &format!("o{i}"),
                "org",
                &[
                    FULCRUM,
                    "origin",
                    "--listen",
                    &format!("10.77.0.30:900{i}"),
                    "--name",
                    &format!("o{i}"),
                ],
            );
        }
    }

    fn fulcrum(&self, node: &str) {
        let cfg = self.path("fulcrum.toml");
        if !cfg.exists() {
            std::fs::write(&cfg, pair_config()).unwrap();
        }
        self.spawn(
            &format!("fulcrum-{node}"),
            node,
            &[
                FULCRUM,
                "--log-level",
                "warn",
                "run",
                "--config",
                cfg.to_str().unwrap(),
            ],
        );
        let ns = self.ns(node);
        wait_sync(&format!("fulcrum answers in {node}"), || {
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &ns,
                    FULCRUM,
                    "probe",
                    "--admin",
                    "127.0.0.1:9901",
                    "--timeout",
                    "1s",
                ])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
    }

    /// keepalived on `node` with the example config for its role.
    fn keepalived(&self, node: &str) {
        let example = if node == "lb1" {
            "keepalived-master.conf"
        } else {
            "keepalived-backup.conf"
        };
        let conf = self.path(&format!("keepalived-{node}.conf"));
        let text = example_config(example, self.probe_binary().to_str().unwrap());
        std::fs::write(&conf, text).unwrap();
        let pid = |f: &str| {
            self.path(&format!("{node}-{f}.pid"))
                .to_str()
                .unwrap()
                .to_string()
        };
        self.spawn(
            &format!("keepalived-{node}"),
            node,
            &[
                "keepalived",
                "--dont-fork",
                "--log-console",
                "--log-detail",
                "--vrrp",
                "-f",
                conf.to_str().unwrap(),
                "-p",
                &pid("main"),
                "-r",
                &pid("vrrp"),
            ],
        );
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let labels: Vec<String> = self
            .procs
            .lock()
            .unwrap()
            .iter()
            .map(|(l, _)| l.clone())
            .collect();
        for l in labels {
            self.kill(&l);
        }
        if std::thread::panicking() {
            for l in ["keepalived-lb1", "keepalived-lb2"] {
                eprintln!("---- {l} ----\n{}", self.log(l));
            }
        }
        // Deleting a namespace removes its ends of the veth pairs, and so the pairs.
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// An example keepalived config, made to run here: the binary just built, the lab's VIP.
fn example_config(name: &str, fulcrum: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/keepalived")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains("/usr/local/bin/fulcrum") && text.contains("192.0.2.10/24"),
        "{name} changed shape"
    );
    text.replace("/usr/local/bin/fulcrum", fulcrum)
        .replace("192.0.2.10/24", &format!("{VIP}/24"))
}

/// The same fulcrum config on both nodes.
fn pair_config() -> String {
    format!(
        r#"
[admin]
bind = "127.0.0.1:9901"

[[listener]]
name = "web"
bind = "0.0.0.0:8080"
protocol = "http"
pool = "app"

[[pool]]
name = "app"
sticky = {{ cookie = "srv" }}
servers = [ {{ addr = "10.77.0.30:9001" }}, {{ addr = "10.77.0.30:9002" }}, {{ addr = "10.77.0.30:9003" }} ]

[pool.health]
{FAST_TCP_HEALTH}
"#
    )
}

/// Polls `cond` every 20 ms for up to 30 s (blocking: the lab is driven from a plain thread).
fn wait_sync(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Load from the client namespace: one request per new connection to VIP:8080, each
/// outcome recorded with its time.
struct Load {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<(Instant, bool)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(lab: &Lab) -> Load {
        let ns_path = format!("/var/run/netns/{}", lab.ns("cli"));
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (s, l) = (stop.clone(), log.clone());
        let thread = std::thread::spawn(move || {
            let f = std::fs::File::open(&ns_path).unwrap();
            use std::os::fd::AsRawFd;
            // SAFETY: setns(2) with a namespace file we opened; it moves this thread only.
            assert_eq!(
                unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) },
                0,
                "setns into the client namespace"
            );
            let vip: SocketAddr = format!("{VIP}:8080").parse().unwrap();
            let deadline = Instant::now() + Duration::from_secs(600);
            for _ in 0..1_000_000 {
                if s.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                let ok = one_request(vip);
                l.lock().unwrap().push((Instant::now(), ok));
                // About 200 requests a second: enough to time a failover to a few ms.
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Load {
            stop,
            log,
            thread: Some(thread),
        }
    }

    /// (failed, first failure, last failure) among requests finished after `since`.
    fn failures_since(&self, since: Instant) -> (usize, Option<Instant>, Option<Instant>) {
        let log = self.log.lock().unwrap();
        let failed: Vec<Instant> = log
            .iter()
            .filter(|(t, ok)| *t >= since && !ok)
            .map(|(t, _)| *t)
            .collect();
        (
            failed.len(),
            failed.first().copied(),
            failed.last().copied(),
        )
    }

    /// Waits until `n` requests in a row have succeeded after `since`.
    fn steady_after(&self, since: Instant, n: usize) {
        wait_sync("traffic flows through the VIP", || {
            let log = self.log.lock().unwrap();
            let after: Vec<bool> = log
                .iter()
                .filter(|(t, _)| *t >= since)
                .map(|(_, ok)| *ok)
                .collect();
            after.len() >= n && after[after.len() - n..].iter().all(|ok| *ok)
        });
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn one_request(to: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&to, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET / HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.1 200")
}

/// One failover: how long after the fault the last request failed, and how many did.
#[derive(Clone, Copy, Debug)]
struct Failover {
    /// From the fault to the VIP showing on the other node.
    vip_moved: Duration,
    /// From the fault to the last failed request (zero when none failed).
    outage: Duration,
    failed: usize,
}

fn measure(load: &Load, fault: Instant, vip_seen: Instant) -> Failover {
    load.steady_after(vip_seen, 50);
    let (failed, _, last) = load.failures_since(fault);
    Failover {
        vip_moved: vip_seen - fault,
        outage: last.map_or(Duration::ZERO, |l| l - fault),
        failed,
    }
}

/// The whole story on a fresh lab; returns the two failovers.
fn story() -> (Failover, Failover) {
    let lab = Lab::new();
    lab.origins();
    for n in LB {
        lab.fulcrum(n);
        lab.keepalived(n);
    }
    wait_sync("lb1 (priority 150) wins the first election", || {
        lab.vip_holders() == ["lb1"]
    });
    let load = Load::start(&lab);
    load.steady_after(Instant::now(), 50);

    // 1. The master's fulcrum dies: its track script fails, keepalived gives the VIP up.
    let fault = Instant::now();
    lab.kill("fulcrum-lb1");
    wait_sync("the VIP moves to lb2 when lb1's fulcrum dies", || {
        lab.vip_holders() == ["lb2"]
    });
    let first = measure(&load, fault, Instant::now());
    eprintln!("fulcrum killed on the master: VIP moved in {:?}; last failure {:?} after the kill; {} requests failed", first.vip_moved, first.outage, first.failed);

    // 2. It comes back: with nopreempt it becomes the standby, the VIP stays on lb2.
    let backups = lab
        .log("keepalived-lb1")
        .matches("Entering BACKUP STATE")
        .count();
    lab.fulcrum("lb1");
    wait_sync("lb1's keepalived leaves FAULT for BACKUP", || {
        lab.log("keepalived-lb1")
            .matches("Entering BACKUP STATE")
            .count()
            > backups
    });
    // Preemption would happen at lb2's next advertisement (every second): watch for 4.
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(4) {
        assert_eq!(
            lab.vip_holders(),
            ["lb2"],
            "nopreempt: the returning higher-priority node must not take the VIP back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // 3. The new master dies whole (keepalived and fulcrum, SIGKILL: no goodbye advert).
    let fault = Instant::now();
    lab.kill("keepalived-lb2");
    lab.kill("fulcrum-lb2");
    wait_sync("lb1 takes the VIP when lb2 dies", || lab.has_vip("lb1"));
    let second = measure(&load, fault, Instant::now());
    eprintln!("master died whole (keepalived + fulcrum): VIP moved in {:?}; last failure {:?} after; {} requests failed", second.vip_moved, second.outage, second.failed);

    // 4. It comes back as the standby; the VIP stays on lb1, and only there.
    lab.fulcrum("lb2");
    lab.keepalived("lb2");
    wait_sync("lb2's keepalived is the standby", || {
        lab.log("keepalived-lb2").contains("Entering BACKUP STATE")
    });
    wait_sync("the VIP is on lb1 alone", || lab.vip_holders() == ["lb1"]);
    load.steady_after(Instant::now(), 50);
    (first, second)
}

#[test]
fn ha_pair_fails_over_when_fulcrum_or_the_whole_master_dies() {
    if skip() {
        return;
    }
    story();
}

/// The closing note's figures: `cargo test --test ha_pair -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement: five full runs (about three minutes)"]
fn ha_pair_failover_median_of_five() {
    if skip() {
        return;
    }
    let runs: Vec<(Failover, Failover)> = (0..5).map(|_| story()).collect();
    let median = |f: &dyn Fn(&(Failover, Failover)) -> Failover| {
        let mut v: Vec<Failover> = runs.iter().map(f).collect();
        v.sort_by_key(|x| x.outage);
        let mid = v[2];
        let mut failed: Vec<usize> = v.iter().map(|x| x.failed).collect();
        failed.sort();
        let mut moved: Vec<Duration> = v.iter().map(|x| x.vip_moved).collect();
        moved.sort();
        (moved[2], mid.outage, failed[2])
    };
    eprintln!(
        "median of 5, fulcrum killed on the master: (VIP moved, outage, failed) = {:?}",
        median(&|r| r.0)
    );
    eprintln!(
        "median of 5, master died whole: (VIP moved, outage, failed) = {:?}",
        median(&|r| r.1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sticky_cookie_from_one_instance_is_honoured_by_the_other() {
    let o = fleet(3).await;
    let text = http_config(
        &servers(&[&o[0], &o[1], &o[2]]),
        "sticky = { cookie = \"srv\" }",
        NO_HEALTH,
    );
    let (a, b) = (Proxy::start(&text).await, Proxy::start(&text).await);
    let c = client();
    let mut seen = std::collections::HashMap::new();
    for _ in 0..6 {
        let r = get(&c, &a.url("web", "/")).await;
        let cookie = r
            .headers
            .get("set-cookie")
            .expect("a sticky cookie")
            .to_str()
            .unwrap();
        let pair = cookie.split(';').next().unwrap().to_string();
        seen.insert(pair, r.origin());
    }
    assert_eq!(seen.len(), 3, "one cookie per server: {seen:?}");
    for (cookie, origin) in &seen {
        for _ in 0..3 {
            let req = http::Request::get(b.url("web", "/"))
                .header("cookie", cookie)
                .body(Default::default())
                .unwrap();
            let r = send(&c, req).await.unwrap();
            assert_eq!(
                &r.origin(),
                origin,
                "instance B sends cookie {cookie} where A did"
            );
        }
    }
}
