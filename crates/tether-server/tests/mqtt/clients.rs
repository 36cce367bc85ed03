//! What the MQTT end-to-end tests (`mqtt.rs`, `mqtt_edge.rs`, `mqtt_session.rs`, and
//! `cluster.rs`'s MQTT case) share: finding the clients nobody here wrote (Mosquitto's tools,
//! Paho in the venv `.ci/run` makes, Node for MQTT.js), running one to its end within a
//! bound, and raw packets where a client library would hide the bytes.
//!
//! A missing client skips its test, except under `CI=true`, where it fails it.

#![allow(dead_code)] // each test binary uses its own part

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use tokio::time::timeout;

/// Upper bound of one client run.
pub const RUN: Duration = Duration::from_secs(20);

/// A tool the test needs: its path, or `None` (skip) when it is missing outside CI.
pub fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{name} is needed under CI=true (.ci/run installs it)"
        );
        eprintln!("skipped: {name} is not installed");
    }
    found
}

/// The venv's Python with paho-mqtt (`TETHER_MQTT_VENV`, or `target/mqtt-venv` as `.ci/run`
/// makes it), or `None` (skip) when it is missing outside CI.
pub fn paho_python() -> Option<PathBuf> {
    let venv = std::env::var_os("TETHER_MQTT_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/mqtt-venv")
        });
    let python = venv.join("bin/python");
    if !python.is_file() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the paho-mqtt venv {} is needed under CI=true (.ci/run makes it)",
            venv.display()
        );
        eprintln!("skipped: no paho-mqtt venv at {}", venv.display());
        return None;
    }
    Some(python)
}

/// Runs a client to its end (bounded): its exit code, standard output and error.
pub async fn run(program: &PathBuf, args: &[&str]) -> (Option<i32>, String, String) {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the client");
    let output = timeout(RUN, child.wait_with_output())
        .await
        .expect("the client did not end in time")
        .expect("client output");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The JSON payloads the tests push, as the clients print them.
pub fn payloads(texts: &[&str]) -> Vec<String> {
    texts.iter().map(|t| format!(r#"{{"m":"{t}"}}"#)).collect()
}

/// A CONNECT 3.1.1 as client id `device`, user name `app`, password `token` (clean session,
/// keep alive 60 s).
pub fn connect_311(device: &str, app: &str, token: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0xC2, 0, 60];
    for field in [device, app, token] {
        body.extend_from_slice(&(field.len() as u16).to_be_bytes());
        body.extend_from_slice(field.as_bytes());
    }
    packet(0x10, &body)
}

/// A packet of type-and-flags `first` around `body` (its remaining length in MQTT's
/// variable-length encoding).
pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        out.push(if len > 0 { byte | 0x80 } else { byte });
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// The packets in `bytes` (each whole: first byte and body), and what is left of a packet in
/// part.
pub fn split_packets(bytes: &mut Vec<u8>) -> Vec<(u8, Vec<u8>)> {
    let mut packets = Vec::new();
    loop {
        let (mut len, mut shift, mut at) = (0usize, 0, 1);
        let whole = loop {
            let Some(&b) = bytes.get(at) else { break None };
            len |= usize::from(b & 0x7F) << shift;
            shift += 7;
            at += 1;
            if b & 0x80 == 0 {
                break Some(at + len);
            }
        };
        match whole {
            Some(end) if bytes.len() >= end => {
                let rest = bytes.split_off(end);
                packets.push((bytes[0], bytes[at..].to_vec()));
                *bytes = rest;
            }
            _ => return packets,
        }
    }
}

/// The next `n` whole packets from `s`, `read` keeping what came of the next one.
pub async fn read_packets(
    s: &mut tokio::net::TcpStream,
    read: &mut Vec<u8>,
    n: usize,
) -> Vec<(u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut got = split_packets(read);
    while got.len() < n {
        let mut chunk = [0u8; 512];
        let len = timeout(RUN, s.read(&mut chunk))
            .await
            .expect("packets in time")
            .expect("read");
        assert!(len > 0, "closed after {got:?}");
        read.extend_from_slice(&chunk[..len]);
        got.extend(split_packets(read));
    }
    assert_eq!(got.len(), n, "{got:?}");
    got
}
