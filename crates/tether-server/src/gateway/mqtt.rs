//! The MQTT listener's accept loop (`docs/mqtt.md`, section 1): plain, or inside TLS
//! (`mqtts://`). An MQTT connection is served like a raw TCP one (`super::conn::serve`) with
//! an [`MqttWire`], which translates its packets to the session's frames and back.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::time::timeout;

use super::io::goodbye;
use super::outbox::Close;
use super::{Gateway, REFUSAL_TIMEOUT, conn};
use crate::accept::AcceptErrors;
use crate::tls::Certs;
use crate::transport::Carrier;
use crate::transport::Wire;
use crate::transport::mqtt::MqttWire;

impl Gateway {
    /// Accepts MQTT clients until shutdown, inside TLS with `tls`.
    ///
    /// A client whose address the listener's guard refuses is closed at once, before a byte
    /// is read. One over the per-IP rate or a limit gets a CONNACK with the refusal's code,
    /// which needs its CONNECT first (its protocol level says which CONNACK it reads): at most
    /// [`super::MAX_WS_REFUSALS`] such clients wait at once (shared with the WebSocket
    /// listener's), each for at most a second; one past them is closed without an answer.
    pub async fn serve_mqtt(self: Arc<Self>, listener: TcpListener, tls: Option<Arc<Certs>>) {
        let name = if tls.is_some() { "mqtts" } else { "mqtt" };
        let mut errors = AcceptErrors::new(name);
        while let Some((stream, peer)) = self.accept(&listener, &mut errors).await {
            let guard = self.mqtt_guard.load();
            let Ok(refused) = self.guard_ip(&guard, peer.ip()) else {
                continue;
            };
            let admitted = match refused {
                Some(code) => Err(code),
                None => self.admit(&guard, peer.ip()),
            };
            let gw = self.clone();
            let max_packet = gw.limits.max_frame;
            let permit = match admitted {
                Ok(permit) => permit,
                Err(code) => {
                    let Ok(slot) = self.ws_refusals.clone().try_acquire_owned() else {
                        continue;
                    };
                    let tls = tls.clone();
                    self.tasks.spawn(async move {
                        let _slot = slot;
                        let close = Close::at_once(code, format!("refused: {}", code.label()));
                        match tls {
                            None => refuse(MqttWire::new(stream, max_packet), &close).await,
                            Some(certs) => {
                                let Some(tls) = gw.tls_handshake(&certs, stream, peer, name).await
                                else {
                                    return;
                                };
                                refuse(MqttWire::over(tls, max_packet), &close).await;
                            }
                        }
                    });
                    continue;
                }
            };
            match &tls {
                None => self.tasks.spawn(async move {
                    conn::serve(MqttWire::new(stream, max_packet), permit).await;
                }),
                Some(certs) => {
                    let certs = certs.clone();
                    self.tasks.spawn(async move {
                        let Some(tls) = gw.tls_handshake(&certs, stream, peer, name).await else {
                            return;
                        };
                        conn::serve(MqttWire::over(tls, max_packet), permit).await;
                    })
                }
            };
        }
    }
}

/// Reads a refused client's CONNECT (within a second) and answers it with `close`'s CONNACK.
async fn refuse<C: Carrier>(mut wire: MqttWire<C>, close: &Close) {
    if let Ok(Ok(Some(_))) = timeout(REFUSAL_TIMEOUT, wire.recv()).await {
        goodbye(&mut wire, &mut VecDeque::new(), close).await;
    }
}
