//! `weft_api::dns` against a real name server (`weft_tests::dns`): the search
//! domains and `ndots` of a pod's `resolv.conf`, lookup failures, and the
//! control client re-resolving the controller's name when it reconnects.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use weft_api::dns::{DnsError, Resolver};
use weft_tests::control::TestControl;
use weft_tests::dns::{DnsServer, Question};

const FQDN: &str = "weft-controller.weft-system.svc.cluster.local";

/// The `resolv.conf` the kubelet writes for a pod in namespace `weft-system`.
const POD_RESOLV_CONF: &[u8] =
    b"search weft-system.svc.cluster.local svc.cluster.local cluster.local\n\
nameserver 127.0.0.1\noptions ndots:5 timeout:1 attempts:2\n";

fn pod_resolver(dns: &DnsServer) -> Resolver {
    Resolver::from_conf(
        Path::new("resolv.conf"),
        POD_RESOLV_CONF,
        b"",
        dns.addr().port(),
    )
}

fn a(name: &str) -> Question {
    Question {
        name: name.into(),
        kind: "A".into(),
    }
}

#[tokio::test]
async fn a_service_name_is_found_through_the_search_domains() {
    let ip = IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10));
    let dns = DnsServer::start_local(&[(FQDN, ip)]).await.unwrap();
    let resolver = pod_resolver(&dns);

    let addrs = resolver
        .resolve("weft-controller.weft-system.svc:8090")
        .await
        .unwrap();
    assert_eq!(addrs, vec![SocketAddr::new(ip, 8090)]);
    // Two dots are fewer than ndots:5: the search domains come first, in
    // order, until one exists; the name as given is not asked.
    let asked: Vec<Question> = dns.asked().into_iter().filter(|q| q.kind == "A").collect();
    assert_eq!(
        asked,
        vec![
            a("weft-controller.weft-system.svc.weft-system.svc.cluster.local"),
            a("weft-controller.weft-system.svc.svc.cluster.local"),
            a(FQDN),
        ]
    );

    // A fully qualified name is asked as it is, once.
    let before = dns.asked().len();
    let addrs = resolver.resolve(&format!("{FQDN}.:8090")).await.unwrap();
    assert_eq!(addrs, vec![SocketAddr::new(ip, 8090)]);
    let fqdn_asked: Vec<Question> = dns.asked()[before..]
        .iter()
        .filter(|q| q.kind == "A")
        .cloned()
        .collect();
    assert_eq!(fqdn_asked, vec![a(FQDN)]);
}

#[tokio::test]
async fn an_unknown_name_fails_naming_it() {
    let dns = DnsServer::start_local(&[]).await.unwrap();
    let err = pod_resolver(&dns)
        .resolve("nothing.weft-system.svc:8090")
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::Lookup { .. }), "{err}");
    assert!(err.to_string().contains("nothing.weft-system.svc"), "{err}");
}

/// The control client dials the controller by name and resolves it again on
/// every reconnect: when the controller moves to another address and the
/// name follows, the next call reaches it there.
#[tokio::test]
async fn the_control_client_follows_the_controllers_name() {
    let mut control = TestControl::prepare(Duration::from_secs(3600));
    let port = control.grpc_addr().port();
    control.start_controller().await;
    let dns = DnsServer::start_local(&[(FQDN, control.grpc_addr().ip())])
        .await
        .unwrap();

    let identity: weft_api::Identity = "spiffe://cluster.local/ns/default/sa/web".parse().unwrap();
    let anchors = control.state.path().join("client-anchors.pem");
    std::fs::write(&anchors, control.anchors_pem()).unwrap();
    let client = weft_api::control::ControlClient::with_resolver(
        &format!("weft-controller.weft-system.svc:{port}"),
        weft_tests::control::anchors_tls(&anchors),
        control.identity.clone(),
        pod_resolver(&dns),
    )
    .unwrap();
    let config = control.certify_config(&identity);
    let certify = |client: weft_api::control::ControlClient| {
        let config = config.clone();
        async move {
            let token = std::fs::read_to_string(&config.token_file).unwrap();
            let (_key, csr) = weft_api::certify::new_key_and_csr(&config.identity).unwrap();
            client
                .certify(weft_api::certify::CertifyRequest {
                    token: weft_api::certify::IdentityToken::new(token).unwrap(),
                    csr,
                })
                .await
        }
    };
    certify(client.clone())
        .await
        .expect("certified through the name");
    assert!(dns.asked().contains(&a(FQDN)), "{:?}", dns.asked());

    // The controller moves to 127.0.0.2 (same port), and the name with it.
    control.stop_controller().await;
    control.settings.grpc_addr = SocketAddr::from(([127, 0, 0, 2], port));
    control.start_controller().await;
    dns.set(FQDN, &[IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match certify(client.clone()).await {
            Ok(_) => break,
            Err(e) if tokio::time::Instant::now() > deadline => {
                panic!("the client did not follow the name to 127.0.0.2: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
