//! Running a command in the guest through its exec serial port (`exec.sock`).
//!
//! ```text
//! host -> guest:  <id> <base64 of the command>\n
//! guest -> host:  NIMBUS-EXEC <id> <exit code> <base64 of stdout+stderr, or "-">\n
//! ```
//! Lines that are not the reply to our id are ignored (late replies of an earlier,
//! timed-out request; noise). Callers serialize requests per VM.

use super::lines::LineSplitter;
use crate::error::{Error, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use nimbus_agent_api::ExecResult;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest reply line accepted (base64 of ~12 MiB of output).
const MAX_REPLY: usize = 16 << 20;

/// The request line for `command`.
pub fn encode_request(id: &str, command: &str) -> String {
    format!("{id} {}\n", STANDARD.encode(command))
}

/// A parsed reply line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecReply {
    pub id: String,
    pub exit_code: i32,
    pub output: String,
}

/// Parses a reply line; `None` for anything else.
pub fn parse_reply(line: &str) -> Option<ExecReply> {
    let start = line.find("NIMBUS-EXEC ")?;
    let mut fields = line[start..].split_whitespace().skip(1);
    let id = fields.next()?.to_string();
    let exit_code = fields.next()?.parse().ok()?;
    let output = match fields.next()? {
        "-" => String::new(),
        b64 => String::from_utf8_lossy(&STANDARD.decode(b64).ok()?).into_owned(),
    };
    Some(ExecReply {
        id,
        exit_code,
        output,
    })
}

/// Sends `command` on the exec socket and waits for its reply, at most `limit`.
pub async fn run(sock: &Path, command: &str, limit: Duration) -> Result<ExecResult> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let exchange = async {
        let mut stream = tokio::net::UnixStream::connect(sock)
            .await
            .map_err(Error::io("connect to", sock))?;
        stream
            .write_all(encode_request(&id, command).as_bytes())
            .await
            .map_err(Error::io("write to", sock))?;
        let mut lines = LineSplitter::new(MAX_REPLY);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = stream
                .read(&mut buf)
                .await
                .map_err(Error::io("read from", sock))?;
            if n == 0 {
                return Err(Error::QemuFailed("exec channel closed".into()));
            }
            for line in lines.push(&buf[..n]) {
                match parse_reply(&line) {
                    Some(reply) if reply.id == id => {
                        return Ok(ExecResult {
                            exit_code: reply.exit_code,
                            output: reply.output,
                        })
                    }
                    _ => tracing::debug!(line, "ignoring exec line"),
                }
            }
        }
    };
    tokio::time::timeout(limit, exchange).await.map_err(|_| {
        Error::Timeout(format!(
            "the guest did not answer the command within {}s",
            limit.as_secs()
        ))
    })?
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader};

    #[test]
    fn request_and_reply_lines() {
        assert_eq!(
            encode_request("7", "cat /data/hello.txt"),
            "7 Y2F0IC9kYXRhL2hlbGxvLnR4dA==\n"
        );
        let reply = parse_reply("NIMBUS-EXEC 7 0 aGVsbG8K").expect("reply");
        assert_eq!(
            reply,
            ExecReply {
                id: "7".into(),
                exit_code: 0,
                output: "hello\n".into()
            }
        );
        let empty = parse_reply("junk NIMBUS-EXEC ab -1 -").expect("reply");
        assert_eq!((empty.exit_code, empty.output.as_str()), (-1, ""));
        assert_eq!(parse_reply("hb 12.5 3"), None);
        assert_eq!(parse_reply("NIMBUS-EXEC 7 x -"), None);
        assert_eq!(parse_reply("NIMBUS-EXEC 7 0 !!!"), None);
    }

    /// A fake guest: answers every request after a stale reply with another id.
    #[tokio::test]
    async fn run_over_a_socket_ignores_other_ids_and_times_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("exec.sock");
        let listener = tokio::net::UnixListener::bind(&sock).expect("bind");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (r, mut w) = stream.into_split();
                let mut lines = BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let mut parts = line.split(' ');
                    let id = parts.next().unwrap_or("");
                    let cmd = STANDARD
                        .decode(parts.next().unwrap_or(""))
                        .unwrap_or_default();
                    if cmd == b"sleep" {
                        continue;
                    }
                    let out = STANDARD.encode([b"ran: ".as_slice(), &cmd].concat());
                    let msg = format!("NIMBUS-EXEC old 1 -\nnoise\nNIMBUS-EXEC {id} 3 {out}\n");
                    let _ = w.write_all(msg.as_bytes()).await;
                }
            }
        });
        let res = run(&sock, "echo hi", Duration::from_secs(5))
            .await
            .expect("exec");
        assert_eq!(
            res,
            ExecResult {
                exit_code: 3,
                output: "ran: echo hi".into()
            }
        );
        let err = run(&sock, "sleep", Duration::from_millis(200))
            .await
            .expect_err("must fail");
        assert_eq!(err.code(), "timeout");
    }
}
