//! Transparent interception for real, in network namespaces (root only; each
//! test prints why it is skipped otherwise): `weft-init`'s rules, and the
//! original destination read back with `weft_proxy::sockopt`.
//!
//! Until the proxy is wired in, a small test server stands in for it on the
//! proxy's ports: it answers each connection with the original destination
//! it recovered.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use weft_api::consts::{PROXY_ADMIN_PORT, PROXY_INBOUND_PORT, PROXY_OUTBOUND_PORT, PROXY_UID};
use weft_proxy::iptables::owned_lines;
use weft_proxy::sockopt::{OriginalDstError, original_dst};
use weft_tests::netns::{Net, Pod, skip_unless_root, workspace_binary};

/// Longest a test server lives, whatever happens to the test.
const SERVER_LIFETIME: Duration = Duration::from_secs(60);

fn weft_init_bin() -> PathBuf {
    workspace_binary("weft-init").expect("weft-init binary")
}

/// Runs `weft-init` in `pod` with `args` and `env`; returns its stdout.
fn weft_init(pod: &Pod, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = pod.command(weft_init_bin());
    cmd.args(args).envs(env.iter().copied());
    let out = pod.run(&mut cmd).expect("weft-init succeeds");
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// `iptables-save` of the nat table for both families, without the comment
/// lines (they carry timestamps).
fn nat_rules(pod: &Pod) -> String {
    let mut all = String::new();
    for save in ["iptables-nft-save", "ip6tables-nft-save"] {
        let out = pod
            .run(pod.command(save).args(["-t", "nat"]))
            .expect("iptables-save runs");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if !line.starts_with('#') {
                all.push_str(line);
                all.push('\n');
            }
        }
    }
    all
}

/// A TCP server in a pod. For each connection it reads the client's message
/// and answers `<tag> got <message> for <original destination>`.
struct Server {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<String>>,
}

impl Server {
    fn start(pod: &Pod, addr: &str, tag: &'static str) -> Server {
        let addr: SocketAddr = addr.parse().expect("server address");
        let listener = pod
            .enter(|| TcpListener::bind(addr))
            .expect("enter pod")
            .unwrap_or_else(|e| panic!("bind {addr} in {}: {e}", pod.name()));
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + SERVER_LIFETIME;
            let mut answers = Vec::new();
            while !stopped.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => answers.push(answer(stream, tag)),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            answers
        });
        Server { stop, thread }
    }

    /// Stops the server; returns the answers it gave.
    fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("server thread")
    }
}

fn answer(mut stream: TcpStream, tag: &str) -> String {
    // A connection iptables never saw has no conntrack record: it was not
    // redirected, so its destination is this socket's own address.
    let orig = match original_dst(&stream) {
        Ok(addr) => addr.to_string(),
        Err(OriginalDstError::NoConntrackRecord) => match stream.local_addr() {
            Ok(addr) => addr.to_string(),
            Err(e) => format!("unknown ({e})"),
        },
        Err(e) => format!("unknown ({e})"),
    };
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut message = String::new();
    let _ = stream.read_to_string(&mut message);
    let answer = format!("{tag} got {message} for {orig}");
    let _ = stream.write_all(answer.as_bytes());
    answer
}

/// An unmodified app in `pod` (as `uid`, or root) connects to `addr`, sends
/// `message`, and returns the answer.
fn probe(pod: &Pod, uid: Option<u32>, addr: &str, message: &str) -> String {
    let bin = env!("CARGO_BIN_EXE_weft-tcp-probe");
    let mut cmd = match uid {
        Some(uid) => pod.command_as(uid, bin),
        None => pod.command(bin),
    };
    let out = pod.run(cmd.args([addr, message])).expect("probe succeeds");
    String::from_utf8(out.stdout).expect("utf-8 answer")
}

#[test]
fn weft_init_twice_gives_identical_rules() {
    if skip_unless_root() {
        return;
    }
    let net = Net::new("twice").unwrap();
    let pod = net.pod("a").unwrap();
    let config = [
        "--skip-inbound-ports",
        "22,8000-8100",
        "--skip-outbound-ports",
        "25",
        "--skip-subnets",
        "198.19.0.0/16,2001:db8::/32",
    ];

    weft_init(&pod, &config, &[]);
    let first = nat_rules(&pod);
    weft_init(&pod, &config, &[]);
    let second = nat_rules(&pod);
    assert_eq!(first, second);
    assert_eq!(first.matches("-j WEFT_INBOUND").count(), 2, "{first}");
    assert!(
        first.contains("-A WEFT_OUTPUT -d 2001:db8::/32 -j RETURN"),
        "{first}"
    );

    // A different configuration replaces the rules; the first one restores them.
    weft_init(&pod, &["--skip-outbound-ports", "26"], &[]);
    let other = nat_rules(&pod);
    assert_ne!(first, other);
    assert!(!other.contains("--dports 25 "), "{other}");
    weft_init(&pod, &config, &[]);
    assert_eq!(first, nat_rules(&pod));
}

#[test]
fn dry_run_matches_what_is_installed() {
    if skip_unless_root() {
        return;
    }
    let net = Net::new("dryrun").unwrap();
    let pod = net.pod("a").unwrap();
    let env = [
        ("WEFT_INIT_SKIP_INBOUND_PORTS", "22,4000-4010"),
        ("WEFT_INIT_SKIP_OUTBOUND_PORTS", "25,587"),
        ("WEFT_INIT_SKIP_SUBNETS", "198.19.0.0/16,fd00::/8"),
    ];

    let dry = weft_init(&pod, &["--dry-run"], &env);
    assert_eq!(
        nat_rules(&pod).matches("WEFT").count(),
        0,
        "dry run installs nothing"
    );
    weft_init(&pod, &[], &env);

    let (v4_plan, v6_plan) = dry
        .split_once("# IPv6:")
        .expect("dry run has an IPv6 section");
    let planned = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with("-A "))
            .map(str::to_string)
            .collect()
    };
    for (plan, save) in [
        (v4_plan, "iptables-nft-save"),
        (v6_plan, "ip6tables-nft-save"),
    ] {
        let out = pod.run(pod.command(save).args(["-t", "nat"])).unwrap();
        let installed = owned_lines(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(planned(plan), installed, "{save}");
        assert!(installed.len() >= 10, "{installed:#?}");
    }
}

#[test]
fn outbound_tcp_is_redirected_and_its_original_destination_recovered() {
    if skip_unless_root() {
        return;
    }
    let net = Net::new("out").unwrap();
    let a = net.pod("a").unwrap();
    let b = net.pod("b").unwrap();
    weft_init(&a, &[], &[]);
    let proxy = Server::start(&a, &format!("127.0.0.1:{PROXY_OUTBOUND_PORT}"), "proxy");
    let app_b = Server::start(&b, "0.0.0.0:8080", "b");

    let target = format!("{}:8080", b.addr());
    let answer = probe(&a, None, &target, "hello");
    assert_eq!(answer, format!("proxy got hello for {target}"));

    assert_eq!(proxy.stop().len(), 1);
    assert!(app_b.stop().is_empty(), "pod B's app was reached directly");
}

#[test]
fn inbound_tcp_to_three_ports_is_redirected_with_its_original_port() {
    if skip_unless_root() {
        return;
    }
    let net = Net::new("in").unwrap();
    let a = net.pod("a").unwrap();
    let b = net.pod("b").unwrap();
    weft_init(&b, &["--skip-inbound-ports", "2222"], &[]);
    let proxy = Server::start(&b, &format!("0.0.0.0:{PROXY_INBOUND_PORT}"), "proxy");
    let admin = Server::start(&b, &format!("0.0.0.0:{PROXY_ADMIN_PORT}"), "admin");
    let skipped = Server::start(&b, "0.0.0.0:2222", "ssh");

    for port in [8080, 9090, 5432] {
        let target = format!("{}:{port}", b.addr());
        let answer = probe(&a, None, &target, &format!("to-{port}"));
        assert_eq!(answer, format!("proxy got to-{port} for {target}"));
    }
    // The admin port and the configured skip port are not redirected.
    for (port, tag) in [(PROXY_ADMIN_PORT, "admin"), (2222, "ssh")] {
        let target = format!("{}:{port}", b.addr());
        let answer = probe(&a, None, &target, "direct");
        assert_eq!(answer, format!("{tag} got direct for {target}"));
    }

    assert_eq!(proxy.stop().len(), 3);
    assert_eq!(admin.stop().len(), 1);
    assert_eq!(skipped.stop().len(), 1);
}

#[test]
fn traffic_of_the_proxy_uid_is_not_redirected() {
    if skip_unless_root() {
        return;
    }
    let net = Net::new("uid").unwrap();
    let a = net.pod("a").unwrap();
    let b = net.pod("b").unwrap();
    weft_init(&a, &[], &[]);
    let proxy = Server::start(&a, &format!("127.0.0.1:{PROXY_OUTBOUND_PORT}"), "proxy");
    let app_b = Server::start(&b, "0.0.0.0:8080", "b");
    let target = format!("{}:8080", b.addr());

    // The proxy's own connection goes straight out: no loop back into it.
    let answer = probe(&a, Some(PROXY_UID), &target, "from-proxy");
    assert_eq!(answer, format!("b got from-proxy for {target}"));
    // Another uid in the same pod is redirected.
    let answer = probe(&a, Some(1000), &target, "from-app");
    assert_eq!(answer, format!("proxy got from-app for {target}"));

    assert_eq!(proxy.stop().len(), 1);
    assert_eq!(app_b.stop().len(), 1);
}

#[test]
fn loopback_admin_port_skip_ports_and_skip_subnets_are_not_redirected() {
    if skip_unless_root() {
        return;
    }
    let net = Net::new("skip").unwrap();
    let a = net.pod("a").unwrap();
    let b = net.pod("b").unwrap();
    let c = net.pod("c").unwrap();
    let skip_c = format!("{}/32", c.addr());
    weft_init(
        &a,
        &["--skip-outbound-ports", "8081", "--skip-subnets", &skip_c],
        &[],
    );
    let proxy = Server::start(&a, &format!("127.0.0.1:{PROXY_OUTBOUND_PORT}"), "proxy");
    let local = Server::start(&a, "127.0.0.1:9999", "local");
    let b8081 = Server::start(&b, "0.0.0.0:8081", "b");
    let c8080 = Server::start(&c, "0.0.0.0:8080", "c");
    let b_admin = Server::start(&b, &format!("0.0.0.0:{PROXY_ADMIN_PORT}"), "admin");

    let answer = probe(&a, None, "127.0.0.1:9999", "lo");
    assert_eq!(answer, "local got lo for 127.0.0.1:9999");
    let target = format!("{}:8081", b.addr());
    assert_eq!(
        probe(&a, None, &target, "port"),
        format!("b got port for {target}")
    );
    let target = format!("{}:8080", c.addr());
    assert_eq!(
        probe(&a, None, &target, "net"),
        format!("c got net for {target}")
    );

    // Another pod's admin server is reached directly, never over mesh TLS.
    let target = format!("{}:{PROXY_ADMIN_PORT}", b.addr());
    assert_eq!(
        probe(&a, None, &target, "scrape"),
        format!("admin got scrape for {target}")
    );

    assert!(proxy.stop().is_empty());
    assert_eq!(b_admin.stop().len(), 1);
    assert_eq!(local.stop().len(), 1);
    assert_eq!(b8081.stop().len(), 1);
    assert_eq!(c8080.stop().len(), 1);
}

#[test]
fn weft_init_without_capability_or_iptables_says_what_to_do() {
    if skip_unless_root() {
        return;
    }
    let net = Net::new("caps").unwrap();
    let pod = net.pod("a").unwrap();

    let out = pod.command_as(PROXY_UID, weft_init_bin()).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("CAP_NET_ADMIN"), "{stderr}");
    assert!(stderr.contains("NET_ADMIN and NET_RAW"), "{stderr}");

    let out = pod
        .command("env")
        .arg("PATH=/nonexistent")
        .arg(weft_init_bin())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`iptables-nft-save` was not found"),
        "{stderr}"
    );
    assert!(stderr.contains("apt-get install iptables"), "{stderr}");

    assert_eq!(nat_rules(&pod).matches("WEFT").count(), 0);
}

/// `original_dst` for IPv4, IPv6 and IPv4 on a dual-stack socket, with
/// redirects on loopback inside a pod (no addresses beyond loopback needed).
#[test]
fn original_destination_is_recovered_for_ipv4_and_ipv6() {
    if skip_unless_root() {
        return;
    }
    let net = Net::new("sockopt").unwrap();
    let pod = net.pod("a").unwrap();
    // Before any rule, connections are not tracked at all.
    let untracked = pod
        .enter(|| {
            let listener = TcpListener::bind("127.0.0.1:7001").expect("bind");
            let _client = TcpStream::connect("127.0.0.1:7001").expect("connect");
            let (accepted, _) = listener.accept().expect("accept");
            original_dst(&accepted).map_err(|e| e.to_string())
        })
        .unwrap();
    assert_eq!(
        untracked,
        Err(OriginalDstError::NoConntrackRecord.to_string())
    );

    for (bin, dst, from, to) in [
        ("iptables-nft", "127.0.0.1", "7000", "7001"),
        ("ip6tables-nft", "::1", "7000", "7001"),
        ("iptables-nft", "127.0.0.1", "7003", "7002"),
    ] {
        pod.run(pod.command(bin).args([
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            dst,
            "--dport",
            from,
            "-j",
            "REDIRECT",
            "--to-ports",
            to,
        ]))
        .unwrap();
    }
    let cases = [
        ("127.0.0.1:7001", "127.0.0.1:7000"),
        ("[::1]:7001", "[::1]:7000"),
        // IPv4 accepted on a dual-stack IPv6 socket (v4-mapped local address).
        ("[::]:7002", "127.0.0.1:7003"),
    ];
    for (listen, connect) in cases {
        let recovered = pod
            .enter(|| {
                let listener = TcpListener::bind(listen).expect("bind");
                let _client = TcpStream::connect(connect).expect("connect");
                let (accepted, _) = listener.accept().expect("accept");
                original_dst(&accepted).map_err(|e| e.to_string())
            })
            .unwrap();
        assert_eq!(
            recovered,
            Ok(connect.parse().unwrap()),
            "listening on {listen}"
        );
    }
}
