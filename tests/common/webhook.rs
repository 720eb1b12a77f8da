//! The admission webhook server of `kimg sim webhook` ([`kimg::sim::webhook`]), on
//! loopback with a certificate of its own, for host tests: `/mutate` adds a label,
//! `/validate` refuses `forbidden-` names, and the misbehaving paths (`/slow`,
//! `/wrong-uid`, `/huge`, `/garbage`, `/bad-patch`); every caller's username is recorded.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine;

pub struct Webhook {
    pub addr: SocketAddr,
    /// The server's certificate, base64 of its PEM (a `caBundle`).
    pub ca_bundle: String,
    pub users: Arc<Mutex<Vec<String>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Webhook {
    pub fn start() -> Webhook {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse().expect("ip")));
        let cert = params.self_signed(&key).expect("cert");
        let ca_bundle = base64::engine::general_purpose::STANDARD.encode(cert.pem());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("tls");
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("addr");
        let users: Arc<Mutex<Vec<String>>> = Default::default();
        let seen = users.clone();
        let record: kimg::sim::webhook::Recorder =
            Arc::new(move |u: &str| seen.lock().expect("users").push(u.to_string()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
                let stopped = async {
                    let _ = stopped.await;
                };
                kimg::sim::webhook::serve(listener, Arc::new(config), stopped, Some(record)).await;
            });
        });
        Webhook {
            addr,
            ca_bundle,
            users,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `https://ADDR/PATH`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    /// Stops serving: later calls are refused connections.
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.stop();
    }
}
