//! What the cluster's Redis holds and spends: `INFO` memory and CPU, and the sessions tether
//! registered, read over a plain RESP connection (a few commands per sample, so no Redis
//! client crate).
//!
//! Sessions are counted the way the registry keeps them (see `tether_redis::registry`): the
//! nodes are the fields of `<prefix>:{g}:nodes`, and each node's sessions are the members of
//! `<prefix>:{n:<node>}:sessions`.

use anyhow::{Context, bail};
use bytes::{Buf, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One connection to the Redis being measured.
#[derive(Debug)]
pub struct RedisProbe {
    stream: TcpStream,
    buf: BytesMut,
    prefix: String,
}

/// One reading of Redis.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct RedisSample {
    /// `INFO memory` used_memory: what Redis' allocator holds for data and overheads.
    pub used_memory: u64,
    /// `INFO memory` used_memory_rss.
    pub used_memory_rss: u64,
    /// `INFO cpu` used_cpu_user + used_cpu_sys, seconds since Redis started.
    pub cpu_s: f64,
    /// `DBSIZE`.
    pub keys: u64,
    /// Sessions registered by every node together.
    pub sessions: u64,
}

/// A RESP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    Text(String),
    Int(i64),
    Nil,
    Array(Vec<Reply>),
}

impl RedisProbe {
    /// Connects to `redis://host:port` (no password, database 0); keys start with `prefix`.
    pub async fn connect(url: &str, prefix: &str) -> anyhow::Result<RedisProbe> {
        let rest = url.strip_prefix("redis://").unwrap_or(url);
        let hostport = rest.split('/').next().unwrap_or(rest);
        let hostport = if hostport.contains(':') {
            hostport.to_owned()
        } else {
            format!("{hostport}:6379")
        };
        let stream = TcpStream::connect(&hostport)
            .await
            .with_context(|| format!("cannot reach Redis at {hostport}"))?;
        Ok(RedisProbe {
            stream,
            buf: BytesMut::with_capacity(16 * 1024),
            prefix: prefix.to_owned(),
        })
    }

    /// Reads memory, CPU, keys and sessions.
    pub async fn sample(&mut self) -> anyhow::Result<RedisSample> {
        let memory = self.text(&["INFO", "memory"]).await?;
        let cpu = self.text(&["INFO", "cpu"]).await?;
        let keys = match self.command(&["DBSIZE"]).await? {
            Reply::Int(n) => n.max(0) as u64,
            other => bail!("DBSIZE answered {other:?}"),
        };
        let nodes_key = format!("{}:{{g}}:nodes", self.prefix);
        let nodes = match self.command(&["HKEYS", &nodes_key]).await? {
            Reply::Array(items) => items,
            other => bail!("HKEYS answered {other:?}"),
        };
        let mut sessions = 0;
        for node in nodes {
            let Reply::Text(node) = node else { continue };
            let key = format!("{}:{{n:{}}}:sessions", self.prefix, escape(&node));
            if let Reply::Int(n) = self.command(&["SCARD", &key]).await? {
                sessions += n.max(0) as u64;
            }
        }
        Ok(RedisSample {
            used_memory: info_field(&memory, "used_memory").unwrap_or(0.0) as u64,
            used_memory_rss: info_field(&memory, "used_memory_rss").unwrap_or(0.0) as u64,
            cpu_s: info_field(&cpu, "used_cpu_user").unwrap_or(0.0)
                + info_field(&cpu, "used_cpu_sys").unwrap_or(0.0),
            keys,
            sessions,
        })
    }

    async fn text(&mut self, args: &[&str]) -> anyhow::Result<String> {
        match self.command(args).await? {
            Reply::Text(s) => Ok(s),
            other => bail!("{args:?} answered {other:?}"),
        }
    }

    async fn command(&mut self, args: &[&str]) -> anyhow::Result<Reply> {
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        self.stream.write_all(out.as_bytes()).await?;
        loop {
            if let Some((reply, used)) = parse(&self.buf)? {
                self.buf.advance(used);
                return Ok(reply);
            }
            self.buf.reserve(16 * 1024);
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                bail!("Redis closed the connection");
            }
        }
    }
}

/// Escapes a node id as the registry does inside a key's hash tag.
fn escape(id: &str) -> String {
    id.replace('%', "%25")
        .replace('{', "%7B")
        .replace('}', "%7D")
        .replace(':', "%3A")
}

/// A numeric `field:value` line of an `INFO` answer.
fn info_field(info: &str, field: &str) -> Option<f64> {
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

/// Check, then parse: the whole reply at the front of `buf` and its length, or `None` when
/// more bytes are needed.
fn parse(buf: &[u8]) -> anyhow::Result<Option<(Reply, usize)>> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let Some((&kind, line)) = buf[..end].split_first() else {
        bail!("empty RESP line");
    };
    let line = std::str::from_utf8(line).context("RESP line is not UTF-8")?;
    let after = end + 2;
    let number = || -> anyhow::Result<i64> {
        line.parse()
            .with_context(|| format!("bad RESP number {line:?}"))
    };
    match kind {
        b'+' => Ok(Some((Reply::Text(line.to_owned()), after))),
        b'-' => bail!("Redis error: {line}"),
        b':' => Ok(Some((Reply::Int(number()?), after))),
        b'$' => {
            let Ok(len) = usize::try_from(number()?) else {
                return Ok(Some((Reply::Nil, after)));
            };
            if buf.len() < after + len + 2 {
                return Ok(None);
            }
            let text = String::from_utf8_lossy(&buf[after..after + len]).into_owned();
            Ok(Some((Reply::Text(text), after + len + 2)))
        }
        b'*' => {
            let Ok(count) = usize::try_from(number()?) else {
                return Ok(Some((Reply::Nil, after)));
            };
            let mut items = Vec::with_capacity(count.min(1024));
            let mut at = after;
            for _ in 0..count {
                let Some((item, used)) = parse(&buf[at..])? else {
                    return Ok(None);
                };
                items.push(item);
                at += used;
            }
            Ok(Some((Reply::Array(items), at)))
        }
        other => bail!("unknown RESP type {:?}", other as char),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_replies_and_waits_for_more() {
        let whole = b"*3\r\n$5\r\nbench\r\n:42\r\n$-1\r\n";
        let (reply, used) = parse(whole).unwrap().unwrap();
        assert_eq!(used, whole.len());
        assert_eq!(
            reply,
            Reply::Array(vec![
                Reply::Text("bench".into()),
                Reply::Int(42),
                Reply::Nil
            ])
        );
        for cut in 0..whole.len() {
            assert_eq!(parse(&whole[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert!(parse(b"-ERR nope\r\n").is_err());
    }

    #[test]
    fn reads_info_fields() {
        let info = "# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\nused_memory_rss:2097152\r\n";
        assert_eq!(info_field(info, "used_memory"), Some(1_048_576.0));
        assert_eq!(info_field(info, "used_memory_rss"), Some(2_097_152.0));
        assert_eq!(info_field(info, "used_cpu_sys"), None);
        assert_eq!(escape("gw:1{x}"), "gw%3A1%7Bx%7D");
    }
}
